"""lightseg chooses OpenMP's wait policy only when it can take effect and the user has not."""
import os
import subprocess
import sys


def policy_after(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport os, lightseg\n"
                          "print(os.environ.get('OMP_WAIT_POLICY'), lightseg.OMP_DEFAULTED)"],
                         env={**base, **env}, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_passive_beside_a_busy_process():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another user's job, runnable all the time
    try:
        assert policy_after("") == ["PASSIVE", "True"]
    finally:
        hog.kill()
        hog.wait()


def test_the_choice_by_hand():
    from lightseg import choose_wait_policy

    assert choose_wait_policy({}, torch_loaded=False, others_runnable=lambda: 0) is None  # idle: libgomp's spinning is faster
    assert choose_wait_policy({}, torch_loaded=False, others_runnable=lambda: 1) == "PASSIVE"
    assert choose_wait_policy({}, torch_loaded=False, others_runnable=lambda: None) == "PASSIVE"  # unknown: the safe side
    assert choose_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, torch_loaded=False, others_runnable=lambda: 3) is None
    assert choose_wait_policy({"GOMP_SPINCOUNT": "0"}, torch_loaded=False, others_runnable=lambda: 3) is None
    assert choose_wait_policy({}, torch_loaded=True, others_runnable=lambda: 3) is None

    def not_needed():
        raise AssertionError("the kernel is sampled only when the choice depends on it")

    assert choose_wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, torch_loaded=False, others_runnable=not_needed) is None
    assert choose_wait_policy({}, torch_loaded=True, others_runnable=not_needed) is None


def test_runnable_tasks_read_from_the_kernels_count(tmp_path):
    from lightseg import _others_runnable

    p = tmp_path / "loadavg"
    p.write_text("1.07 1.52 2.35 3/86 26472\n")
    assert _others_runnable(p) == 2  # the reader is one of the 3
    p.write_text("0.00 0.01 0.05 1/80 100\n")
    assert _others_runnable(p) == 0
    p.write_text("garbage\n")
    assert _others_runnable(p) is None
    assert _others_runnable(tmp_path / "missing") is None


def test_the_users_choice_is_kept():
    assert policy_after("", OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "False"]
    assert policy_after("", GOMP_SPINCOUNT="10000") == ["None", "False"]


def test_nothing_changes_once_torch_is_loaded():
    # libgomp read the environment already: setting it now would only mislead (and reach child processes)
    assert policy_after("import torch") == ["None", "False"]
