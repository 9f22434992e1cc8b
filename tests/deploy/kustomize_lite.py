"""Render deploy/k8s kustomizations without kubectl: the small subset of kustomize that bnfold's overlays use.

Supported: ``resources`` (files, or directories holding a kustomization.yaml), ``patches`` given by ``path``
(strategic-merge patches, matched to their target by apiVersion, kind and metadata.name) and ``images``
(``newName`` / ``newTag``). Anything else in a kustomization raises, so a new feature in an overlay fails
here loudly instead of being skipped. Strategic merge follows Kubernetes' patchMergeKey for the lists the
overlays touch (containers and env by name, volumeMounts by mountPath, ports by containerPort); every other
list is replaced, and a null in a patch deletes the key, as in Kubernetes.

Where kubectl or kustomize is installed, tests/deploy/test_k8s.py checks this renderer against it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def load_all(path: Path) -> list[Obj]:
    """Every YAML document in ``path`` (empty documents skipped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        match = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
        if match is None:
            out.append(copy.deepcopy(item))
        else:
            out[match] = strategic_merge(out[match], item)
    return out


def strategic_merge(base: Obj, patch: Obj) -> Obj:
    """``patch`` merged into a copy of ``base`` (see the module docstring for the list rules)."""
    out = copy.deepcopy(base)
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        elif isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = strategic_merge(out[name], value)
        elif isinstance(value, list) and name in MERGE_KEYS and isinstance(out.get(name), list):
            out[name] = _merge_list(out[name], value, MERGE_KEYS[name])
        else:
            out[name] = copy.deepcopy(value)
    return out


def _identity(obj: Obj) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def _containers(node: Any) -> list[Obj]:
    """Every container anywhere in ``node`` (pod templates, KServe predictors), as kustomize's images finds them."""
    found: list[Obj] = []
    if isinstance(node, dict):
        for name, value in node.items():
            if name in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += _containers(value)
    elif isinstance(node, list):
        for value in node:
            found += _containers(value)
    return found


def _set_images(obj: Obj, images: list[Obj]) -> None:
    for container in _containers(obj):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"


def render(directory: Path) -> list[Obj]:
    """The objects that ``kubectl kustomize directory`` would print (order aside)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml uses {sorted(unknown)}; kustomize_lite supports {SUPPORTED}")
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else load_all(path)
    for patch_ref in kustomization.get("patches", []):
        if set(patch_ref) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: ...` is supported, got {patch_ref}")
        for patch in load_all(directory / patch_ref["path"]):
            targets = [i for i, obj in enumerate(objects) if _identity(obj) == _identity(patch)]
            if len(targets) != 1:
                raise ValueError(f"{directory}/{patch_ref['path']}: patch target {_identity(patch)} not found once")
            objects[targets[0]] = strategic_merge(objects[targets[0]], patch)
    for obj in objects:
        _set_images(obj, kustomization.get("images", []))
    return objects
