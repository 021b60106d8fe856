"""lightseg chooses OpenMP's wait policy only when it can take effect and the user has not (issue 12)."""
import os
import subprocess
import sys


def policy_after(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport os, lightseg\n"
                          "print(os.environ.get('OMP_WAIT_POLICY'), lightseg.OMP_DEFAULTED)"],
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_passive_by_default_before_torch_loads():
    assert policy_after("") == ["PASSIVE", "True"]


def test_the_users_choice_is_kept():
    assert policy_after("", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "False"]
    assert policy_after("", GOMP_SPINCOUNT="10000") == ["None", "False"]


def test_nothing_changes_once_torch_is_loaded():
    # libgomp read the environment already: setting it now would only mislead (and reach child processes)
    assert policy_after("import torch") == ["None", "False"]
