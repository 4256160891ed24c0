"""Which models run: the ``INFERENCE_MODELS`` specification turned into :class:`Model` objects.

The specification is a comma-separated list of built-in names (``ct-body-mask``, the CPU
reference model in :mod:`.reference`; ``sagemaker``, a SageMaker real-time endpoint in
:mod:`.sagemaker`) or ``package.module:attribute`` for a user plugin. This module sits above
the backends and the contract (:mod:`.model`): it imports them, and none of them imports it.
The backends are imported when they are named, so a function pays only for the ones it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from dicomweb_core.hooks.inference.model import MAX_CODE_MEANING_LENGTH, Model

REFERENCE_MODEL = "ct-body-mask"
SAGEMAKER_MODEL = "sagemaker"
KNOWN_MODELS = (REFERENCE_MODEL, SAGEMAKER_MODEL)


def load_models(spec: str, environ: Mapping[str, str]) -> list[Model]:
    """The models named in ``spec``, a comma-separated list; empty or ``none`` means no models.

    ``ct-body-mask`` is the reference model (:mod:`.reference`); ``sagemaker`` is a
    SageMaker real-time endpoint configured from ``environ`` (``SAGEMAKER_ENDPOINT_NAME``
    required; ``SAGEMAKER_MODALITIES``, default ``CT``; ``SAGEMAKER_MODEL_VERSION``, default
    ``1``; ``SAGEMAKER_MAX_PAYLOAD_BYTES``); ``package.module:attribute`` imports a user plugin,
    a class or factory called with no arguments. Raises ``ValueError`` for an unknown name, a
    plugin that cannot be loaded or is not a :class:`Model`, or two models with the same name.
    """
    models: list[Model] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name or name.lower() == "none":
            continue
        if name == REFERENCE_MODEL:
            # Each backend is imported only when configured: the reference model needs
            # scipy, which a SageMaker-only function should not pay for at cold start.
            from dicomweb_core.hooks.inference.reference import CtBodyMaskModel  # noqa: PLC0415

            model: Model = CtBodyMaskModel()
        elif name == SAGEMAKER_MODEL:
            from dicomweb_core.hooks.inference.sagemaker import SageMakerModel  # noqa: PLC0415

            model = SageMakerModel.from_environ(environ)
        elif ":" in name:
            model = _load_plugin(name)
        else:
            known = ", ".join(KNOWN_MODELS)
            raise ValueError(
                f"unknown inference model {name!r}; known models: {known}, "
                "or 'package.module:attribute' for a plugin"
            )
        if any(existing.name == model.name for existing in models):
            raise ValueError(f"the inference model {model.name!r} is configured twice")
        models.append(model)
    return models


def _load_plugin(reference: str) -> Model:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"plugin {reference!r} must be written 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"plugin module {module_name!r} cannot be imported: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"plugin {reference!r}: {module_name} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"plugin {reference!r} is not a class or factory")
    model = target()
    if not isinstance(model, Model):
        raise ValueError(f"plugin {reference!r} did not produce a Model (name, version, accepts, run)")
    for field_name in ("name", "version"):
        value = getattr(model, field_name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_CODE_MEANING_LENGTH:
            raise ValueError(
                f"plugin {reference!r}: {field_name} must be a non-empty str of at most 64 chars"
            )
    return model
