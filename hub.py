"""torch's hub cache: the one reader (and downloader) of torchvision's pretrained weights, for
classifiers (``zoo.py``) and detectors (``detectors.py``) alike.

Where there is no network the file can be put into the cache by hand; the one-line error says
which file, from which address, into which folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision

from errors import ParamError, UserError, reason


def hub_folder() -> Path:
    """The folder of torch's hub cache that holds downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_weights_file(weights: torchvision.models.WeightsEnum, what: str,
                     param: str | None = None) -> Path:
    """The file of ``weights`` in torch's hub cache, downloaded there when missing.

    A failed download is one line that starts with ``what`` (which weights were wanted); with
    ``param`` it is a :class:`ParamError` that also names the parameter through which a file
    could be given instead.
    """
    folder = hub_folder()
    path = folder / os.path.basename(weights.url)
    if path.is_file():
        return path
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None,
                                       progress=False)
    except (URLError, OSError, RuntimeError, ValueError) as exc:
        message = (f"{what}: {path.name} is not in {folder} and downloading it from "
                   f"{weights.url} failed ({reason(exc, 100)}); put the file in {folder}")
        if param is None:
            raise UserError(message) from None
        raise ParamError(param, message + " or pass {param} PATH") from None
    return path
