"""Any timm classifier by name: ``model=timm model.name=resnet10t`` (``pip install -e ".[timm]"``).

timm is imported inside the functions, so importing this module (config checks do) stays cheap.
"""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError
from aistudio.models.names import check_name_and_classes
from aistudio.models.norm import set_bn_momentum
from aistudio.models.weights import is_weights_file, load_weights_file


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise AistudioError('model=timm needs the timm package, which is not installed: pip install -e ".[timm]"'
                            ) from err
    return timm


# the library comes first in the kind, so an unknown name is reported as "not a timm classification model"
MODEL_KIND = "timm classification"


def available_models() -> list[str]:
    """What config checks validate ``model.name`` against, before anything is built."""
    return _timm().list_models()


def build_timm_classifier(name: str, num_classes: int | None, weights: str | None = None, in_channels: int = 3,
                          bn_momentum: float | None = None, **kwargs: Any) -> Any:
    """Build a timm classifier with ``num_classes`` outputs and ``in_channels`` inputs (timm's ``in_chans``).

    ``weights``: null (random init) or a local file (a state dict, or an aistudio checkpoint); tensors that do
    not fit (another class count's head) stay at init. timm's pretrained tags are refused: timm downloads
    them from the Hugging Face hub, and nothing is downloaded at run time. Extra ``kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``). ``bn_momentum``: BatchNorm
    running-statistics momentum (see :func:`aistudio.models.norm.set_bn_momentum`).
    """
    timm = _timm()
    num_classes = check_name_and_classes(name, timm.list_models(), MODEL_KIND, num_classes)
    if weights and not is_weights_file(weights):
        raise _no_download(timm, name, str(weights))
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    if weights:
        load_weights_file(model, weights)
    return set_bn_momentum(model, bn_momentum)


def _no_download(timm: Any, name: str, weights: str) -> AistudioError:
    tagged = next((t for t in (weights, f"{name}.{weights}") if t in timm.list_pretrained(f"{name}.*")), name)
    file = f"{tagged.replace('.', '_')}.pth"
    return AistudioError(
        f"model.weights={weights!r}: timm pretrained weights are downloaded from the Hugging Face hub, which "
        f"aistudio does not do at run time. Pass a local file: on a machine with internet, save "
        f"torch.save(timm.create_model({tagged!r}, pretrained=True).state_dict(), {file!r}) and set "
        f"model.weights=/path/to/{file} — or train from scratch with model.weights=null")
