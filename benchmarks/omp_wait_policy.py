"""Training images/s under OpenMP wait policies, alone and beside one competing process.

    .venv/bin/python benchmarks/omp_wait_policy.py            # -> benchmarks/results/omp_wait_policy.json

Each measurement is a fresh process (the policy is read when libgomp loads) training mininet_95k as
`make demo` does (batch 8 at 120x160, Adam, cross-entropy, 2 threads) for ``--iters`` steps after 3
warm-up steps. Policies: libgomp's default (spin ~300k iterations before sleeping), PASSIVE (sleep at
once), a short spin (GOMP_SPINCOUNT=10000) and lightseg's choice when the user sets none (PASSIVE when
another task is runnable as lightseg is imported, libgomp's default otherwise).
The competitor is one process busy on one core (a pure-Python loop), as another user's job would be.
Settings alternate within each repetition, so a drift in the machine's load reaches all of them; the
table reports medians and the load average beside each figure.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import conditions, save

AUTO = "lightseg's choice"
POLICIES = {"default (unset)": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            AUTO: {}}
WORKER = r"""
import sys
if sys.argv[2:] == ["auto"]:
    import lightseg  # before torch: lightseg chooses the policy (PASSIVE only when another task is runnable)
import time, torch, torch.nn.functional as F
import lightseg  # after torch: lightseg leaves a policy torch already loaded with as it is
iters = int(sys.argv[1])
torch.manual_seed(0)
model = lightseg.create_model("mininet_95k", num_classes=11).train()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(8, 3, 120, 160)
y = torch.randint(0, 11, (8, 120, 160))
def step():
    out = model(x)
    out = out["out"] if isinstance(out, dict) else out
    loss = F.cross_entropy(out, y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
t0 = time.perf_counter()
for _ in range(iters):
    step()
print(8 * iters / (time.perf_counter() - t0))
"""


def run(policy_env, iters, auto=False):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy_env)
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", WORKER, str(iters)] + (["auto"] if auto else []), env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]), load


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument("--out", default="omp_wait_policy.json")
    args = p.parse_args()
    cond = conditions()
    policies = args.policies
    results = {(pol, comp): [] for comp in ("alone", "beside 1 busy process") for pol in policies}
    for rep in range(args.reps):
        for comp in ("alone", "beside 1 busy process"):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if comp != "alone" else None
            try:
                time.sleep(0.5 if hog else 0)
                for pol in (policies if rep % 2 == 0 else policies[::-1]):
                    ips, load = run(POLICIES[pol], args.iters, auto=pol == AUTO)
                    results[(pol, comp)].append({"images_per_s": round(ips, 2), "loadavg_1m_before": round(load, 2)})
                    print(f"rep {rep} {comp:22s} {pol:22s} {ips:6.2f} img/s (load {load:.1f})", file=sys.stderr, flush=True)
            finally:
                if hog:
                    hog.terminate()
                    hog.wait()
    rows = [{"policy": pol, "competition": comp, "median_images_per_s": statistics.median(r["images_per_s"] for r in runs),
             "runs": runs} for (pol, comp), runs in results.items()]
    print(f"{'policy':24s} {'competition':24s} {'median img/s':>12s}  runs (img/s @ load)")
    for r in rows:
        detail = ", ".join(f"{x['images_per_s']}@{x['loadavg_1m_before']}" for x in r["runs"])
        print(f"{r['policy']:24s} {r['competition']:24s} {r['median_images_per_s']:12.2f}  {detail}")
    save(args.out, {"conditions": cond, "iters": args.iters, "rows": rows})


if __name__ == "__main__":
    main()
