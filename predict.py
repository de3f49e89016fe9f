"""Predict with a trained run: ``python predict.py run=<run dir | id | prefix | latest | exported .onnx>
input=<image | folder | dataset.json> [out=<folder>] [ckpt=best|last|<path>] [batch_size=N] [topk=5]
[score_threshold=0.05] [save_overlays=true] [mask_format=index|values] [split=all|train|val|test]``.

Writes the task's prediction files and summary.json into ``<run>/predictions/<input>-<ckpt>/`` (or
``out``); exits 1 when an input could not be read. Only Hydra is imported here, so ``--help`` answers
without loading torch.
"""

import hydra
from omegaconf import DictConfig

from aistudio.cli.predict import OWN_KEYS
from aistudio.cli.run_args import apply_to_sys_argv, register_run_subdir_resolver
from aistudio.config import register_resolvers

register_resolvers()
register_run_subdir_resolver()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from aistudio.cli.predict import main as predict

    predict(cfg)


if __name__ == "__main__":
    apply_to_sys_argv(OWN_KEYS)  # data.num_workers=0 etc. change the run's config.json, not predict.yaml
    main()
