"""Export a trained run for deployment: ``python export.py run=<run dir | id | prefix | latest>
format=onnx|torchscript [ckpt=best|last|<path>] [opset=17]``.

Writes ``export/<model>-<ckpt>.onnx`` (or ``.pt``) and ``export/<model>-<ckpt>.<suffix>.json`` (input spec, opset,
parity check against PyTorch on validation images). Only Hydra is imported here.
"""

import hydra
from omegaconf import DictConfig

from aistudio.cli.export import OWN_KEYS
from aistudio.cli.run_args import apply_to_sys_argv, register_run_subdir_resolver
from aistudio.config import register_resolvers

register_resolvers()
register_run_subdir_resolver()


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from aistudio.cli.export import main as export

    export(cfg)


if __name__ == "__main__":
    apply_to_sys_argv(OWN_KEYS)  # data.* etc. change the run's config.json, not export.yaml
    main()
