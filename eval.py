"""Evaluate a trained run: ``python eval.py run=<run dir | id | prefix | latest> [ckpt=best|last|<path>]
[split=test|val|train] [data.split_index=3 | data.project=/other/folder ...]``.

Writes ``eval/<split>-<ckpt>.json`` into the run directory. Only Hydra is imported here, so ``--help``
answers without loading torch.
"""

import hydra
from omegaconf import DictConfig

from aistudio.cli.evaluate import OWN_KEYS
from aistudio.cli.run_args import apply_to_sys_argv, register_run_subdir_resolver
from aistudio.config import register_resolvers

register_resolvers()
register_run_subdir_resolver()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from aistudio.cli.evaluate import main as evaluate

    evaluate(cfg)


if __name__ == "__main__":
    apply_to_sys_argv(OWN_KEYS)  # data.split_index=3 etc. change the run's config.json, not eval.yaml
    main()
