"""Anomaly-detection methods behind one interface, registered by name.

:mod:`vtfusion.methods.base` defines the interface (:class:`AnomalyMethod`: fit on the k
shots, predict maps and scores, report config and cost), :mod:`vtfusion.methods.registry`
the registry (``register_method``, ``list_methods``, ``get_method``). Importing this
package registers the built-in methods: ``vtfusion`` (the paper), ``patch_knn``,
``zero_shot``, ``winclip``, ``winclip_plus`` and ``finegrainedad``. A new method is one file with a registered subclass, imported here or by
the code that uses it.
"""

from vtfusion.methods.base import AnomalyMethod, FitContext, MethodCost, Prediction, Shots
from vtfusion.methods.registry import create_method, get_method, list_methods, register_method
# The built-in methods register themselves on import, in the order `vtfusion list methods` shows.
from vtfusion.methods import vtfusion_method  # noqa: F401,E402
from vtfusion.methods import patch_knn  # noqa: F401,E402
from vtfusion.methods import zero_shot  # noqa: F401,E402
from vtfusion.methods import winclip  # noqa: F401,E402
from vtfusion.methods import finegrainedad  # noqa: F401,E402

__all__ = ["AnomalyMethod", "FitContext", "MethodCost", "Prediction", "Shots", "create_method", "get_method",
           "list_methods", "register_method"]
