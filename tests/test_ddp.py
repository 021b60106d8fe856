"""DistributedDataParallel on CPU (gloo): two spawned processes end with identical weights, and the
validation mIoU reduced across ranks equals a single-process evaluation of the same weights."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp

from lightseg import create_model
from lightseg.checkpoint import load_checkpoint, load_model_weights
from lightseg.config import load_config
from lightseg.data import build_dataset
from lightseg.engine.evaluate import evaluate
from lightseg.engine.train import Trainer
from test_train import make_camvid_like, tiny_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, recipe, overrides, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    trainer = Trainer(load_config(recipe, overrides), next_free_dir=True)
    trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "miou": trainer.last_val_report["miou"],
                "world": trainer.dist.world_size, "run_dir": str(trainer.run_dir)}, f"{out_dir}/rank{rank}.pt")


def test_two_process_gloo_identical_weights_and_metric(tmp_path):
    # 3 validation images: the ranks get 2 and 1, so the reduction must weigh by pixels, not by rank
    data = make_camvid_like(tmp_path / "data", n_train=8, n_val=3)
    recipe = tiny_recipe(tmp_path, data, iters=4)
    overrides = ["train.sync_bn=true", "train.batch_size=1"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("")  # an earlier run's: rank 0 picks run2, and every rank uses it
    mp.spawn(_rank_main, args=(2, _free_port(), str(recipe), overrides, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    assert r0["run_dir"] == r1["run_dir"] == str(tmp_path / "run2")
    assert r0["model"].keys() == r1["model"].keys()
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert r0["miou"] == r1["miou"]

    # only rank 0 wrote; its checkpoint holds the shared weights (SyncBatchNorm converted back by name)
    run_dir = tmp_path / "run2"
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["sampler"]["world_size"] == 2 and ckpt["iteration"] == 4
    val = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(val) == 1

    cfg = load_config(recipe)
    model = create_model("mininet_95k", num_classes=11)
    load_model_weights(model, ckpt)
    single = evaluate(model, build_dataset(cfg["data"], "val", train=False), "cpu", progress=False)
    assert abs(single["miou"] - r0["miou"]) < 1e-12 and abs(val[0]["miou"] - single["miou"]) < 1e-12
