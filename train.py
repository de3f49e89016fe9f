"""Train a model: ``python train.py model=resnet18 optimizer.lr=0.01`` (sweeps: ``python train.py -m ...``).

Only Hydra is imported here, so ``--help`` and ``--cfg job`` answer without loading torch.
"""

import os

import hydra
from omegaconf import DictConfig

from aistudio.cli.resume_args import apply_to_sys_argv
from aistudio.config import register_resolvers

register_resolvers()
os.environ.setdefault("AISTUDIO_ENTRY", os.path.abspath(__file__))  # DDP ranks re-run this script


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from aistudio.cli.train import main as train

    return train(cfg)


if __name__ == "__main__":
    apply_to_sys_argv()  # resume=<run>: the run's own overrides come back first
    main()
