"""A fitted random forest as plain tensors and back (no pickled scikit-learn objects): what
:meth:`RandomForestSegmenter.state_dict` writes into a checkpoint and ``from_state_dict`` reads, so
checkpoints load with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import NODE_DTYPE, Tree

from emseg.models._forest_features import FEATURE_SET

__all__ = ["FORMAT_VERSION", "forest_from_state", "forest_state"]

_FORMAT = "emseg.RandomForestSegmenter"
#: Version of the layout written by :meth:`RandomForestSegmenter.state_dict`.
FORMAT_VERSION = 1

_TREE_ARRAYS = (
    "children_left",
    "children_right",
    "feature",
    "threshold",
    "value",
    "n_node_samples",
    "impurity",
    "weighted_n_node_samples",
)
# NODE_DTYPE field for each stored per-node array.
_NODE_FIELDS = {
    "children_left": "left_child",
    "children_right": "right_child",
    "feature": "feature",
    "threshold": "threshold",
    "impurity": "impurity",
    "n_node_samples": "n_node_samples",
    "weighted_n_node_samples": "weighted_n_node_samples",
    "missing_go_to_left": "missing_go_to_left",
}
_STATE_KEYS = (
    "format",
    "format_version",
    "feature_set",
    "hyper_parameters",
    "num_classes",
    "ignore_label",
    "classes",
    "n_features",
    "sample_counts",
    "trees",
)
_HYPER_KEYS = ("sigmas", "n_estimators", "max_depth", "samples_per_class", "random_state", "n_jobs")


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Copy a numpy array into a tensor that owns its memory.

    64-bit integer arrays (node indices, feature ids, sample counts) are stored
    as int32 when that is lossless: a fully grown default forest has millions
    of nodes, and this keeps its checkpoint ~15 % smaller.
    """
    array = np.asarray(array)
    if array.dtype == np.int64 and array.size and -(2**31) <= array.min() and array.max() < 2**31:
        array = array.astype(np.int32)
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def forest_state(self: Any) -> dict:
    """The body of :meth:`RandomForestSegmenter.state_dict` (see there)."""
    if self._forest is None or self.num_classes is None or self.classes_ is None:
        raise RuntimeError("RandomForestSegmenter is not trained; call fit() before state_dict()")
    trees = []
    for estimator in self._forest.estimators_:
        tree = estimator.tree_
        state = tree.__getstate__()
        nodes = state["nodes"]
        entry: dict = {key: _tensor(nodes[_NODE_FIELDS[key]]) for key in _TREE_ARRAYS if key != "value"}
        entry["value"] = _tensor(state["values"])
        if "missing_go_to_left" in nodes.dtype.names:
            entry["missing_go_to_left"] = _tensor(nodes["missing_go_to_left"])
        entry["max_depth"] = int(state["max_depth"])
        entry["node_count"] = int(state["node_count"])
        trees.append(entry)
    return {
        "format": _FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_set": FEATURE_SET,
        "hyper_parameters": {
            "sigmas": list(self.sigmas),
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "samples_per_class": self.samples_per_class,
            "random_state": self.random_state,
            "n_jobs": self.n_jobs,
        },
        "num_classes": int(self.num_classes),
        "ignore_label": self.ignore_label,
        "classes": [int(c) for c in self.classes_],
        "n_features": int(self._forest.n_features_in_),
        "sample_counts": [int(c) for c in self.sample_counts_] if self.sample_counts_ is not None else None,
        "trees": trees,
    }



def forest_from_state(cls: Any, state: dict) -> Any:
    """The body of :meth:`RandomForestSegmenter.from_state_dict` (see there); ``cls`` builds the segmenter."""
    if not isinstance(state, dict):
        raise ValueError(
            f"state must be the dict of RandomForestSegmenter.state_dict(), got {type(state).__name__}"
        )
    for key in _STATE_KEYS:
        if key not in state:
            raise ValueError(f"random-forest state is missing the key {key!r}")
    if state["format"] != _FORMAT:
        raise ValueError(f"random-forest state has 'format' {state['format']!r}; expected {_FORMAT!r}")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"random-forest state has 'format_version' {state['format_version']!r}; "
            f"this version of emseg reads format_version {FORMAT_VERSION}"
        )
    if state["feature_set"] != FEATURE_SET:
        raise ValueError(
            f"random-forest state has 'feature_set' {state['feature_set']!r}; expected {FEATURE_SET!r}"
        )
    hyper = state["hyper_parameters"]
    for key in _HYPER_KEYS:
        if key not in hyper:
            raise ValueError(f"random-forest state is missing the key 'hyper_parameters.{key}'")
    model = cls(**{key: hyper[key] for key in _HYPER_KEYS})
    num_classes = int(state["num_classes"])
    classes = np.asarray(state["classes"], dtype=np.int64)
    n_features = int(state["n_features"])
    if n_features != model.n_features:
        raise ValueError(
            f"random-forest state has 'n_features' {n_features} but sigmas {model.sigmas} give {model.n_features}"
        )
    if classes.ndim != 1 or not classes.size or classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(
            f"random-forest state has 'classes' {classes.tolist()}; expected ids in [0, {num_classes})"
        )
    trees = state["trees"]
    if len(trees) != model.n_estimators:
        raise ValueError(
            f"random-forest state has {len(trees)} 'trees' but "
            f"'hyper_parameters.n_estimators' is {model.n_estimators}"
        )

    estimators = []
    for t, entry in enumerate(trees):
        estimators.append(_rebuild_tree(entry, t, n_features=n_features, classes=classes, model=model))
    forest = RandomForestClassifier(
        n_estimators=model.n_estimators,
        max_depth=model.max_depth,
        random_state=model.random_state,
        n_jobs=model.n_jobs,
    )
    forest.estimator_ = DecisionTreeClassifier()
    forest.estimators_ = estimators
    forest.classes_ = classes.copy()
    forest.n_classes_ = int(classes.size)
    forest.n_outputs_ = 1
    forest.n_features_in_ = n_features
    model._forest = forest
    model.num_classes = num_classes
    model.ignore_label = None if state["ignore_label"] is None else int(state["ignore_label"])
    model.classes_ = classes
    if state["sample_counts"] is not None:
        model.sample_counts_ = np.asarray(state["sample_counts"], dtype=np.int64)
    return model




def _rebuild_tree(
    entry: dict, index: int, *, n_features: int, classes: np.ndarray, model: Any
) -> DecisionTreeClassifier:
    """Reassemble one fitted ``DecisionTreeClassifier`` from its stored arrays."""
    where = f"trees[{index}]"
    for key in (*_TREE_ARRAYS, "max_depth", "node_count"):
        if key not in entry:
            raise ValueError(f"random-forest state is missing the key '{where}.{key}'")
    node_count = int(entry["node_count"])
    n_classes = int(classes.size)

    def array(key: str) -> np.ndarray:
        value = entry[key]
        arr = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.shape[:1] != (node_count,):
            raise ValueError(f"'{where}.{key}' has shape {tuple(arr.shape)}; expected {node_count} nodes")
        return arr

    nodes = np.zeros(node_count, dtype=NODE_DTYPE)
    for key, field in _NODE_FIELDS.items():
        if field not in NODE_DTYPE.names:
            continue
        if key in entry:
            nodes[field] = array(key)
        elif key != "missing_go_to_left":
            raise ValueError(f"random-forest state is missing the key '{where}.{key}'")
    values = np.ascontiguousarray(array("value"), dtype=np.float64)
    if values.shape != (node_count, 1, n_classes):
        raise ValueError(f"'{where}.value' has shape {values.shape}; expected {(node_count, 1, n_classes)}")
    internal = nodes["left_child"] >= 0
    if internal.any() and (nodes["feature"][internal].min() < 0 or nodes["feature"][internal].max() >= n_features):
        raise ValueError(f"'{where}.feature' refers to features outside [0, {n_features})")

    tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
    tree.__setstate__(
        {"max_depth": int(entry["max_depth"]), "node_count": node_count, "nodes": nodes, "values": values}
    )
    estimator = DecisionTreeClassifier(max_depth=model.max_depth, max_features="sqrt")
    estimator.tree_ = tree
    # The forest encodes labels before growing its trees, so each tree's
    # classes are the indices 0..K-1 into the forest's classes_.
    estimator.classes_ = np.arange(n_classes, dtype=np.float64)
    estimator.n_classes_ = np.int64(n_classes)
    estimator.n_outputs_ = 1
    estimator.n_features_in_ = n_features
    estimator.max_features_ = max(1, int(math.sqrt(n_features)))
    return estimator
