"""Methods by name: ``register_method``, ``list_methods``, ``get_method`` (as timm's ``register_model``).

A method is a subclass of :class:`~vtfusion.methods.base.AnomalyMethod`; registering it
makes it a ``--methods`` choice of ``vtfusion reproduce``, a row of its tables, and a
line of ``vtfusion list methods``::

    @register_method("mean_diff")
    class MeanDifference(AnomalyMethod):
        ...
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from torch import nn

from vtfusion.config import ExperimentConfig
from vtfusion.methods.base import AnomalyMethod
from vtfusion.registry import Registry

M = TypeVar("M", bound=type[AnomalyMethod])

METHODS: Registry[type[AnomalyMethod]] = Registry("method")


def register_method(name: str, cls: M | None = None, *, replace: bool = False) -> M | Callable[[M], M]:
    """Register an :class:`AnomalyMethod` subclass as ``name`` (also a class decorator)."""

    def add(method: M) -> M:
        if not (isinstance(method, type) and issubclass(method, AnomalyMethod)):
            raise TypeError(f"method {name!r} must be a subclass of AnomalyMethod, got {method!r}")
        METHODS.register(name, method, replace=replace)
        method.name = name
        return method

    return add if cls is None else add(cls)


def list_methods() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return METHODS.names()


def get_method(name: str) -> type[AnomalyMethod]:
    """The method class registered as ``name`` (``ValueError`` naming the known ones)."""
    return METHODS.get(name)


def create_method(name: str, cfg: ExperimentConfig, backbone: nn.Module | None = None,
                  options: Any = None) -> AnomalyMethod:
    """An instance of the method ``name`` for ``cfg`` (sharing ``backbone`` when given)."""
    return get_method(name)(cfg, backbone=backbone, options=options)


__all__ = ["METHODS", "create_method", "get_method", "list_methods", "register_method"]
