"""Property-based fuzzing of LLMDeployment specs on the real apiserver, with the operator.

`cases()` is a hypothesis strategy of specs from valid (helpers.llmd_body, examples/, and
every engine x quantization x GPU type x model source crossed) to absurd: leaves of the
CRD's own schema set to extreme numbers, odd, long and huge strings and unicode, other
enum values, wrong JSON types, fields removed (required ones too) or added (unknown ones),
long lists, pod template patches and deep nesting in overrides.podTemplatePatch.
`draw_cases` draws a fixed, seeded batch of them.

`run_batch` creates a batch in one namespace while the real operator runs, waits once
until every accepted object is judged (condition Planned for its generation), then
classifies each and checks what its outcome promises:

* refused at admission (HTTP 400/422): the message names the field (`spec.` or
  `metadata.name`);
* refused by the operator (Planned=False, InvalidSpec or NoFeasiblePlan): the message
  names a field of the spec and says what to do, and no child object exists;
* planned: its children exist (so the apiserver's schema took them), and every pod
  template they carry passes the real apiserver's Pod Security admission at the level
  the engine promises (`Engine.pod_security`), checked by a server-side dry-run create.

It then watches a quiet window: no LLMDeployment is written more than `MAX_WRITES_AT_REST`
times and the operator's reconcile counter grows by less than a bound proportional to the
objects (no hot loop); then it deletes the batch, and the operator must let every object go
(remove its finalizer) within a timeout. `operator_violations` also wants the process alive
with no traceback or unexpected handler failure in its log.

Shared by e2e/tests/test_fuzz_specs.py (a fixed batch) and bench/fuzz_specs.py (as many
as asked).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from helpers import GROUP, PLURAL, VERSION, eventually, llmd_body
from llm_operator import engines
from llm_operator.api.v1alpha1 import ENGINES, QUANTIZATIONS
from llm_operator.catalog import load_catalog
from operator_proc import OperatorProcess

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "serving.llm-operator.io_llmdeployments.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
LABEL_LLMD = "serving.llm-operator.io/llmdeployment"
LABEL_ENGINE = "serving.llm-operator.io/engine"
LEVEL_LABEL = "pod-security.kubernetes.io/enforce"
REAL_NODE_TAINT = "llm-operator.io/real-node"  # e2e/realnode.py
MISSING: Any = object()  # a Case's spec that is left out of the body altogether

# Children an LLMDeployment can have (render_objects), by apiVersion and kind.
CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("batch/v1", "Job"),
    ("v1", "PersistentVolumeClaim"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
)
# How often one object may be written during the quiet window (a late status write, the
# autoscaler's first state annotation); a retry or status loop writes far more.
MAX_WRITES_AT_REST = 2
# A condition message says what to do when it contains one of these (after naming the field).
FIX_WORDS = re.compile(
    r"\b(set|unset|use|choose|change|add|remove|raise|lower|create|name|needs?|must|"
    r"required|at most|at least|allowed|supported|should|only|instead|drop|shorten|relax|"
    r"reduce|increase|fewer|more|less|give|fix|is not|are not|cannot|no such|unknown|"
    r"closest|did you mean)\b",
    re.IGNORECASE,
)
# A field path as the apiserver and the operator write it (an unknown field may be unicode).
FIELD_PATH = re.compile(
    r"(?<![\w.])(spec(?:\.[^\s.:\"'\[\],;=]+|\[\d+\])*(?![\w-])|metadata\.name)"
)


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


SPEC_SCHEMA = _spec_schema()
SPEC_FIELDS = frozenset(SPEC_SCHEMA["properties"])
CATALOG = load_catalog()
MODEL_NAMES = [n for m in CATALOG.models for n in (m.name, *m.aliases)]
GPU_NAMES = [n for g in CATALOG.gpus for n in (g.name, *g.aliases, *g.product_labels)]


# --- the spec's leaves, read from the CRD ---------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """A settable place in the spec: its path (0 for a list's first item, MAP_KEY for a
    map's key) and what the schema says it holds."""

    path: tuple[str | int, ...]
    kind: str  # integer | number | string | boolean | enum | int-or-string | array
    enum: tuple[str, ...] = ()


MAP_KEY = "<key>"


def _leaves(schema: Mapping[str, Any], path: tuple[str | int, ...] = ()) -> list[Leaf]:
    if schema.get("x-kubernetes-int-or-string"):
        return [Leaf(path, "int-or-string")]
    kind = schema.get("type")
    if "enum" in schema:
        return [Leaf(path, "enum", tuple(str(v) for v in schema["enum"]))]
    if kind == "object":
        out: list[Leaf] = []
        for key, child in (schema.get("properties") or {}).items():
            out += _leaves(child, (*path, key))
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            out += _leaves(extra, (*path, MAP_KEY))
        return out
    if kind == "array":
        return [Leaf(path, "array"), *_leaves(schema.get("items") or {}, (*path, 0))]
    if kind in ("integer", "number", "string", "boolean"):
        return [Leaf(path, kind)]
    return []


LEAVES = _leaves(SPEC_SCHEMA)
STRING_LEAVES = [leaf for leaf in LEAVES if leaf.kind == "string"]


# --- values ---------------------------------------------------------------------------------

# fmt: off
INTS = [0, -1, 1, 2, 3, 8, 16, 17, 64, 4096, 65536, 10**6, 2**31 - 1, 2**31, 2**32,
        2**53 + 1, 2**63 - 1, -(2**63)]
OUT_OF_RANGE_INTS = [2**63, 2**64, -(2**63) - 1]  # not int64: the apiserver must refuse
NUMBERS = [0.0, -0.0, 5e-324, 1e-300, 1e-9, 0.01, 0.5, 0.8, 0.99, 0.999999, 1.0, 1.5, 2.0,
           100.0, 1e9, 1e300, 1e308, -1.0, -1e308, 2.0**63]
ODD_STRINGS = [
    "", " ", "a", "-", ".", "..", "../../etc/passwd", "a b", "UPPER", "\t", "\n",
    "line\nbreak", "\x00", "nul\x00inside", "\x7f", "\u202eevil\u202c", "שלום עולם",
    "مرحبا", "中文模型", "😀🚀", "e\u0301", "\u200b", "\ufeff", "$(id)", "${HOME}", "`id`",
    "'\"", "--help", "-rf", "=", "a=b", "key: value", "{}", "[]", "null", "true", "0",
    "http://169.254.169.254/", "s3://bucket/prefix", "https://example.com/m.gguf",
    "x" * 63, "x" * 64, "x" * 253, "x" * 254, "~nobody-here/model", "/etc", "C:\\model",
]
# fmt: on
HUGE_SIZES = (1_000, 10_000, 100_000)  # UTF-8 bytes, well under the apiserver's limits
URIS = {"hf": None, "pvc": "weights", "s3": "s3://bucket/llama", "url": "https://h/m.gguf"}
DRAFT_HEADS = ["yuhuili/EAGLE-LLaMA3.1-Instruct-8B", "org/medusa-head", "x"]

integers = st.one_of(
    st.sampled_from(INTS), st.integers(-1000, 10**7), st.sampled_from(OUT_OF_RANGE_INTS)
)
numbers = st.one_of(
    st.sampled_from(NUMBERS), st.floats(allow_nan=False, allow_infinity=False), integers
)
odd_strings = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=24))


def _strings_for(path: tuple[str | int, ...]) -> st.SearchStrategy[str]:
    """Plausible values for the field at `path` (names the catalog knows), or odd ones."""
    names = [str(p) for p in path]
    if "gpuTypes" in names or "provisionableGpuTypes" in names:
        return st.one_of(st.sampled_from(GPU_NAMES), odd_strings)
    if names[-2:] == ["model", "name"] or names[-1:] == ["source"]:
        return st.one_of(st.sampled_from(MODEL_NAMES), odd_strings)
    if "speculativeDecoding" in names:
        return st.one_of(st.sampled_from(DRAFT_HEADS), odd_strings)
    return odd_strings


def _value_for(leaf: Leaf) -> st.SearchStrategy[Any]:
    if leaf.kind == "integer":
        return integers
    if leaf.kind == "number":
        return numbers
    if leaf.kind == "boolean":
        return st.booleans()
    if leaf.kind == "enum":
        valid = st.sampled_from(leaf.enum)
        return st.one_of(
            valid, valid, valid, st.sampled_from([v.upper() for v in leaf.enum]), odd_strings
        )
    if leaf.kind == "int-or-string":
        return st.one_of(st.sampled_from(["auto", "AUTO", "", "16", "8k"]), integers)
    if leaf.kind == "array":
        item = next((x for x in LEAVES if x.path == (*leaf.path, 0)), None)
        if item is None or item.kind == "array":
            return st.lists(st.fixed_dictionaries({}), max_size=3)
        return st.lists(_value_for(item), max_size=40)
    return _strings_for(leaf.path)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTS), st.sampled_from(NUMBERS), odd_strings
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


WRONG_TYPES: list[Any] = [None, True, 0, 1.5, "text", [], {}, [1, "a"], {"a": 1}]


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of dicts and lists around `leaf`."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 3 == 2 else {f"l{level}": value}
    return value


# Parts of overrides.podTemplatePatch: pod fields a user plausibly patches, some the
# apiserver or the CRD's guards refuse, some that lower the pod's security on purpose.
PATCH_PARTS: list[dict[str, Any]] = [
    {"metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}}},
    {"metadata": {"labels": {LABEL_LLMD: "someone-else"}}},
    {"metadata": {"labels": {"bad key!": "v"}}},
    {"metadata": {"name": "renamed", "namespace": "kube-system"}},
    {"spec": {"priorityClassName": "inference"}},
    {"spec": {"terminationGracePeriodSeconds": 5}},
    {"spec": {"terminationGracePeriodSeconds": -5}},
    {"spec": {"nodeSelector": {"pool": "gpu"}}},
    {"spec": {"nodeSelector": "not-a-map"}},
    {"spec": {"tolerations": [{"key": "k", "operator": "Exists"}]}},
    {"spec": {"volumes": [{"name": "extra", "emptyDir": {}}]}},
    {"spec": {"volumes": [{"name": "nfs", "nfs": {"server": "x", "path": "/"}}]}},
    {"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}},
    {"spec": {"containers": [{"name": "engine", "env": [{"name": "X", "value": "1"}]}]}},
    {"spec": {"containers": [{"name": "engine", "image": ""}]}},
    {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}},
    {"spec": {"containers": [{"name": "engine", "securityContext": {"privileged": True}}]}},
    {"spec": {"containers": None}},
    {"spec": {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}},
    {"spec": {"dnsPolicy": "Default"}},
    {"spec": {"dnsPolicy": "Bogus"}},
    {"spec": {"hostNetwork": False}},
    {"spec": {"hostNetwork": True}},
    {"spec": {"serviceAccountName": "admin"}},
    {"spec": {"unknownPodField": 1}},
    {"spec": None},
]


@st.composite
def pod_template_patches(draw: st.DrawFn) -> dict[str, Any]:
    """One to three parts merged, sometimes with deep nesting added."""
    patch: dict[str, Any] = {}
    for part in draw(st.lists(st.sampled_from(PATCH_PARTS), min_size=1, max_size=3)):
        for key, value in part.items():
            if isinstance(patch.get(key), dict) and isinstance(value, dict):
                patch[key] = {**patch[key], **copy.deepcopy(value)}
            else:
                patch[key] = copy.deepcopy(value)
    if draw(st.integers(0, 4)) == 0:
        where = draw(st.sampled_from(["spec", "metadata"]))
        if not isinstance(patch.get(where), dict):
            patch[where] = {}
        patch[where]["deep"] = nested(draw(st.integers(1, 60)))
    return patch


# --- specs ----------------------------------------------------------------------------------


def _bases() -> list[tuple[str, dict[str, Any]]]:
    out = [("llmd_body", llmd_body("base")["spec"])]
    for path in EXAMPLES:
        out.append((f"example {path.stem}", yaml.safe_load(path.read_text())["spec"]))
    return out


BASES = _bases()


@st.composite
def crossed_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Every engine x quantization x GPU types x model source (x model) can come up."""
    engine = draw(st.sampled_from(ENGINES))
    quantization = draw(st.sampled_from(QUANTIZATIONS))
    source = draw(st.sampled_from(sorted(URIS)))
    gpus = draw(st.lists(st.sampled_from(GPU_NAMES), max_size=3, unique=True))
    model: dict[str, Any] = {"name": draw(st.sampled_from(MODEL_NAMES))}
    if source != "hf":
        model["source"] = source
        if draw(st.integers(0, 5)):  # sometimes without the uri it needs
            model["uri"] = URIS[source]
    spec: dict[str, Any] = {
        "model": model,
        "engine": engine,
        "quantization": quantization,
        "hardware": {"gpuTypes": gpus, "allowCpu": draw(st.booleans())},
        "context": {"maxModelLen": draw(st.sampled_from(["auto", 2048, 8192, 32768]))},
        "scaling": {"minReplicas": 1, "maxReplicas": draw(st.integers(1, 3))},
    }
    label = f"crossed {engine}/{quantization}/{source}/{','.join(gpus) or 'any'}"
    return label, spec


def _get(root: Any, path: Sequence[str | int]) -> Any:
    for seg in path:
        found = isinstance(root, list) and isinstance(seg, int) and len(root) > seg
        if not (found or (isinstance(root, dict) and isinstance(seg, str) and seg in root)):
            return MISSING
        root = root[seg]
    return root


def _set(root: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    """Set `path` in `root`, making (or replacing) the dicts and lists on the way."""
    node: Any = root
    for seg, nxt in itertools.pairwise(path):
        fresh: Any = [] if isinstance(nxt, int) else {}
        if isinstance(seg, int):
            while len(node) <= seg:
                node.append(copy.deepcopy(fresh))
            if not isinstance(node[seg], type(fresh)):
                node[seg] = fresh
        elif not isinstance(node.get(seg), type(fresh)):
            node[seg] = fresh
        node = node[seg]
    last = path[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
    node[last] = value


def _present(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path in a JSON value (lists: their first three items)."""
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _present(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value[:3]):
            out += _present(child, (*path, i))
    return out


def _dotted(path: Sequence[str | int]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _concrete(draw: st.DrawFn, path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    keys = st.sampled_from(["a", "nvidia.com/gpu", "memory", "limits", "bad key!", "x" * 64])
    return tuple(draw(keys) if seg == MAP_KEY else seg for seg in path)


DEEP_PATHS: list[tuple[str | int, ...]] = [
    ("overrides", "podTemplatePatch", "spec", "deep"),
    ("overrides", "podTemplatePatch", "metadata", "deep"),
    ("unknownDeep",),
]
# An item for a list that has none yet: the fields of every list's items, some unknown.
LIST_ITEM = {"name": "a", "source": "b/c", "value": "v", "key": "k", "operator": "Equal"}
# The mutations, weighted by repetition.
OPERATIONS = (
    ["set"] * 6
    + ["delete"] * 2
    + ["wrong-type"] * 2
    + ["patch"] * 2
    + ["extra", "huge", "deep", "list"]
)


def _mutate(draw: st.DrawFn, spec: Any) -> tuple[Any, str]:
    """Apply one drawn mutation to `spec` (a copy of it); say what it did."""
    op = draw(st.sampled_from(OPERATIONS))
    if op == "delete":
        paths = _present(spec) if spec is not MISSING else [()]
        path = draw(st.sampled_from(paths))
        if not path:
            return MISSING, "delete spec"
        parent = _get(spec, path[:-1])
        del parent[path[-1]]
        return spec, f"delete {_dotted(path)}"
    if op == "wrong-type":
        paths = _present(spec) if spec is not MISSING else [()]
        path = draw(st.sampled_from(paths))
        current = _get(spec, path) if path else spec
        other = [v for v in WRONG_TYPES if type(v) is not type(current)]
        value = draw(st.one_of(st.sampled_from(other), json_values))
        if not path:
            return value, f"spec = {_short(value)}"
        _set(spec, path, value)
        return spec, f"{_dotted(path)} = {_short(value)} (wrong type)"
    if not isinstance(spec, dict):
        spec = {}
    if op == "set":
        leaf = draw(st.sampled_from(LEAVES))
        path = _concrete(draw, leaf.path)
        value = draw(_value_for(leaf))
    elif op == "huge":
        leaf = draw(st.sampled_from(STRING_LEAVES))
        path = _concrete(draw, leaf.path)
        char = draw(st.sampled_from(["x", "é", "😀", "\u202e", "a/", "\x00"]))
        value = char * (draw(st.sampled_from(HUGE_SIZES)) // len(char.encode()))
    elif op == "extra":
        objects = [p for p in _present(spec) if isinstance(_get(spec, p), dict)]
        parent = draw(st.sampled_from(objects))
        path = (*parent, draw(st.sampled_from(["unknownField", "Engine", "engine ", "x-y", ""])))
        value = draw(json_values)
    elif op == "patch":
        path = ("overrides", "podTemplatePatch")
        value = draw(pod_template_patches())
    elif op == "deep":
        path = draw(st.sampled_from(DEEP_PATHS))
        value = nested(draw(st.integers(10, 100)), draw(json_scalars))
    else:  # list: a long list for one of the spec's lists
        leaf = draw(st.sampled_from([x for x in LEAVES if x.kind == "array"]))
        path = _concrete(draw, leaf.path)
        current = _get(spec, path)
        item = (current[0] if isinstance(current, list) and current else None) or LIST_ITEM
        value = [copy.deepcopy(item) for _ in range(draw(st.sampled_from([2, 33, 65, 200])))]
    _set(spec, path, value)
    return spec, f"{op} {_dotted(path)} = {_short(value)}"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _tolerates_real_node(toleration: Any) -> bool:
    if not isinstance(toleration, dict):
        return False
    key = toleration.get("key")
    return key == REAL_NODE_TAINT or (not key and toleration.get("operator") == "Exists")


def _keep_off_the_real_node(spec: Any) -> None:
    """NOTE: a fuzzed pod that tolerated the real node's taint could run there for real
    (e2e/cluster/node.sh), taking the CPU the real-node tests need; such tolerations are
    dropped (the rest of the spec is what it was drawn to be)."""
    for path in (
        ("hardware", "tolerations"),
        ("overrides", "podTemplatePatch", "spec", "tolerations"),
    ):
        found = _get(spec, path)
        if isinstance(found, list):
            found[:] = [t for t in found if not _tolerates_real_node(t)]


# Names a custom object may have but a Service or a label may not, and lengths around the
# limits of what the children add (-lws, -download-<hash>) and of labels and names.
NAME_SHAPES = {"dotted": "{}.v1", "digit first": "0{}", "upper case": "{}-Big"}
NAME_LENGTHS = [45, 46, 59, 63, 64, 253, 254]
# Pod fields whose values Pod Security judges, and the volume types `restricted` allows.
POD_SECURITY_KEYS = ("securityContext", "initContainers", "ephemeralContainers", "hostUsers",
                     "hostNetwork", "hostPID", "hostIPC")  # fmt: skip
RESTRICTED_VOLUME_KEYS = frozenset({"name", "configMap", "csi", "downwardAPI", "emptyDir",
                                    "ephemeral", "persistentVolumeClaim", "projected",
                                    "secret"})  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One drawn LLMDeployment.

    Attributes:
        spec: the spec sent (MISSING: no spec at all).
        notes: where it came from and each mutation, in order.
        strict: created with fieldValidation=Strict (unknown fields refused, not dropped).
        name_shape: metadata.name: "" (fz-NNNN), a length to pad it to, or one of NAME_SHAPES.
    """

    spec: Any
    notes: tuple[str, ...]
    strict: bool = False
    name_shape: str | int = ""

    def name(self, index: int) -> str:
        base = f"fz-{index:04d}"
        if isinstance(self.name_shape, int):
            return base + "x" * max(0, self.name_shape - len(base))
        return NAME_SHAPES.get(self.name_shape, "{}").format(base)

    def body(self, index: int, namespace: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "LLMDeployment",
            "metadata": {"name": self.name(index), "namespace": namespace},
        }
        if self.spec is not MISSING:
            body["spec"] = self.spec
        return body

    def may_lower_pod_security(self) -> bool:
        """Whether overrides.podTemplatePatch sets what Pod Security judges (a security
        context, another container, a volume type `restricted` forbids): then the user, not
        the renderer, decides the pod's level, and admission of the pods (not of the
        LLMDeployment) enforces the namespace's."""
        patch = _get(self.spec, ("overrides", "podTemplatePatch", "spec"))
        if not isinstance(patch, dict):
            return False
        if any(key in patch for key in POD_SECURITY_KEYS):
            return True
        containers = patch.get("containers")
        if isinstance(containers, list) and any(
            not isinstance(c, dict) or c.get("name") != "engine" or "securityContext" in c
            for c in containers
        ):
            return True
        volumes = patch.get("volumes")
        return isinstance(volumes, list) and any(
            not isinstance(v, dict) or set(v) - RESTRICTED_VOLUME_KEYS for v in volumes
        )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A spec from valid to absurd: a base, then zero to four mutations."""
    if draw(st.integers(0, 2)) == 0:
        label, base = draw(crossed_specs())
    else:
        label, base = draw(st.sampled_from(BASES))
    spec: Any = copy.deepcopy(base)
    notes = [label]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4]))):
        spec, note = _mutate(draw, spec)
        notes.append(note)
    _keep_off_the_real_node(spec)
    shapes: list[str | int] = [""] * 40  # mostly the short default
    shape = draw(st.sampled_from([*shapes, *NAME_LENGTHS, *NAME_SHAPES]))
    if shape != "":
        notes.append(f"metadata.name: {shape}" + (" characters" if isinstance(shape, int) else ""))
    return Case(spec, tuple(notes), strict=draw(st.booleans()), name_shape=shape)


BATCH = 50  # cases drawn as one hypothesis example (a longer list overruns its size limit)


def draw_cases(count: int, seed: int) -> list[Case]:
    """`count` cases, the same for the same seed (and hypothesis version).

    NOTE: hypothesis is used as a generator: a generate-only run, seeded, without shrinking
    or an example database, draws lists of BATCH cases, because the checks run on a whole
    batch at once (one namespace, one wait), which a test per example against a cluster
    could not afford. The first example of a run is the simplest one (every draw its first
    choice: one spec repeated); the second, drawn at random, is kept.
    """
    drawn: list[Case] = []
    for chunk in range(math.ceil(count / BATCH)):
        examples: list[list[Case]] = []

        @hypothesis_seed(seed * 1_000_003 + chunk)
        @settings(
            max_examples=2,
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(cases(), min_size=BATCH, max_size=BATCH))
        def collect(batch: list[Case]) -> None:
            examples.append(batch)  # noqa: B023 (run at once, in this iteration)

        collect()
        drawn += examples[-1]
    return drawn[:count]


# --- running a batch ------------------------------------------------------------------------

ADMISSION = "refused at admission"
INVALID = "refused by the operator: InvalidSpec"
INFEASIBLE = "refused by the operator: NoFeasiblePlan"
PLANNED = "planned"
UNJUDGED = "not judged in time"


@dataclass
class Result:
    """What became of one case."""

    index: int
    case: Case
    name: str
    outcome: str = ""
    detail: str = ""  # the refusal's message, or the children
    fields: str = ""  # the field a refusal names
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # observations that are not violations

    def describe(self) -> str:
        lines = [f"#{self.index} {self.name[:40]}: {self.outcome}: {_clip(self.detail)}"]
        lines += [f"    case: {note}" for note in self.case.notes]
        lines += [f"    VIOLATION: {_clip(v, 600)}" for v in self.violations]
        return "\n".join(lines)


def _clip(text: str, limit: int = 300) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass
class Report:
    """A batch's results and what the operator did meanwhile."""

    results: list[Result]
    elapsed_s: float = 0.0
    operator: list[str] = field(default_factory=list)  # violations of the process
    quiet: dict[str, Any] = field(default_factory=dict)  # the quiet window and the deletion

    @property
    def violations(self) -> list[str]:
        return [*self.operator, *(r.describe() for r in self.results if r.violations)]

    def table(self) -> str:
        """Outcome classes with counts, the fields refusals named, and violations."""
        counts = Counter(r.outcome for r in self.results)
        refused_by = Counter(
            (r.outcome, r.fields)
            for r in self.results
            if r.outcome in (ADMISSION, INVALID, INFEASIBLE)
        )
        kinds = Counter(r.detail for r in self.results if r.outcome == PLANNED)
        lines = [
            f"{len(self.results)} specs, {self.elapsed_s:.0f} s",
            "",
            "| outcome | specs |",
            "|---|---:|",
            *(f"| {name} | {n} |" for name, n in counts.most_common()),
            "",
            "| outcome | field named (first) | specs |",
            "|---|---|---:|",
            *(f"| {o} | `{f or '-'}` | {n} |" for (o, f), n in refused_by.most_common(25)),
            "",
            "| planned: children | specs |",
            "|---|---:|",
            *(f"| {k} | {n} |" for k, n in kinds.most_common()),
        ]
        notes = Counter(n for r in self.results for n in r.notes)
        if notes:
            lines += ["", "| observation (not a violation) | specs |", "|---|---:|"]
            lines += [f"| {n} | {c} |" for n, c in notes.most_common()]
        lines += ["", "quiet window, then deletion:"]
        lines += [f"  {k}: {v}" for k, v in self.quiet.items()]
        lines += ["", f"violations: {len(self.violations)}"]
        return "\n".join(lines)


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.body or exc.reason)


def _named_field(message: str) -> str:
    found = FIELD_PATH.search(message)
    return found.group(1) if found else ""


def _create(custom: client.CustomObjectsApi, namespace: str, result: Result) -> None:
    body = result.case.body(result.index, namespace)
    try:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            body,
            field_validation="Strict" if result.case.strict else None,
        )
    except ApiException as exc:
        message = _message(exc)
        result.outcome, result.detail = ADMISSION, f"{exc.status}: {message}"
        result.fields = _admission_field(message)
        if exc.status not in (400, 422):
            result.violations.append(f"admission answered {exc.status}, not 400/422: {message}")
        elif not result.fields:
            result.violations.append(f"the refusal names no field: {message}")


def _admission_field(message: str) -> str:
    """The first field an apiserver refusal names (its `<nil>:` summary line skipped)."""
    named = _named_field(message)
    if named:
        return re.sub(r"\[\d+\]", "[]", named)
    return ""


def _judged(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Planned condition of the object's current generation, if written yet."""
    generation = obj["metadata"].get("generation")
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Planned" and c.get("observedGeneration") == generation:
            return dict(c)
    return None


def _list(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return {o["metadata"]["name"]: o for o in items}


def _children(api: client.ApiClient, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """Every labelled child in the namespace, by the LLMDeployment its label names."""
    dynamic = DynamicClient(api)
    out: dict[str, list[dict[str, Any]]] = {}
    for api_version, kind in CHILD_KINDS:
        try:
            resource = dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            continue  # e.g. no prometheus-operator CRDs
        for item in resource.get(namespace=namespace, label_selector=LABEL_LLMD).items:
            obj = item.to_dict()
            obj["kind"] = kind
            out.setdefault(obj["metadata"]["labels"][LABEL_LLMD], []).append(obj)
    return out


def _pod_templates(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] in ("Deployment", "Job"):
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return [t for t in (lwt.get("leaderTemplate"), lwt.get("workerTemplate")) if t]
    return []


@contextmanager
def pod_security_namespaces(core: client.CoreV1Api) -> Iterator[dict[str, str]]:
    """One namespace per Pod Security level (restricted, baseline), enforcing it."""
    made: dict[str, str] = {}
    try:
        for level in ("restricted", "baseline"):
            name = f"fz-pss-{level}-{uuid.uuid4().hex[:6]}"
            core.create_namespace(
                client.V1Namespace(
                    metadata=client.V1ObjectMeta(
                        name=name, labels={LEVEL_LABEL: level, "llm-operator.io/e2e": "true"}
                    )
                )
            )
            made[level] = name
        for name in made.values():
            # The dry-run Pod names the default ServiceAccount, which must exist.
            eventually(
                lambda n=name: core.read_namespaced_service_account("default", n),
                timeout=30,
                description=f"default ServiceAccount in {name}",
            )
        yield made
    finally:
        for name in made.values():
            core.delete_namespace(name, propagation_policy="Background")


def _dry_run_pod(core: client.CoreV1Api, namespace: str, template: Mapping[str, Any]) -> None:
    metadata = {
        k: v for k, v in (template.get("metadata") or {}).items() if k in ("labels", "annotations")
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**metadata, "generateName": "pss-"},
        "spec": template["spec"],
    }
    core.create_namespaced_pod(namespace, pod, dry_run="All")


def _check_refusal(result: Result, condition: Mapping[str, Any], children: list[Any]) -> None:
    message = str(condition.get("message") or "")
    result.detail = f"{condition.get('reason')}: {message}"
    named = _named_field(message)
    result.fields = re.sub(r"\[\d+\]", "[]", named)
    if not named:
        result.violations.append(f"the condition names no field: {message}")
    elif named.startswith("spec.") and named.split(".")[1].split("[")[0] not in SPEC_FIELDS:
        result.violations.append(f"the condition names {named}, which is not in the API")
    elif not FIX_WORDS.search(message.split(named, 1)[1]):
        result.violations.append(f"the condition does not say what to do: {message}")
    if children:
        made = ", ".join(f"{c['kind']}/{c['metadata']['name']}" for c in children)
        result.violations.append(f"children exist for a refused spec: {made}")


def _check_planned(
    result: Result,
    obj: Mapping[str, Any],
    children: list[dict[str, Any]],
    core: client.CoreV1Api,
    levels: Mapping[str, str],
) -> None:
    kinds = sorted({c["kind"] for c in children})
    result.detail = " + ".join(kinds) or "none"
    if not {"Deployment", "LeaderWorkerSet", "Job"} & set(kinds):
        result.violations.append(f"planned, but no workload or download Job: {kinds}")
    engine = ((obj.get("status") or {}).get("plan") or {}).get("engine")
    level = engines.get(engine).pod_security if engine else "restricted"
    for child in children:
        for template in _pod_templates(child):
            try:
                _dry_run_pod(core, levels[level], template)
            except ApiException as exc:
                message = _message(exc)
                what = f"{child['kind']}/{child['metadata']['name']}"
                if "violates PodSecurity" in message:
                    if result.case.may_lower_pod_security():
                        result.notes.append("the user's pod template patch lowers Pod Security")
                    else:
                        result.violations.append(f"{what} refused at {level}: {message}")
                elif exc.status == 422:
                    result.violations.append(f"{what}'s pod template is invalid: {message}")
                else:
                    # e.g. the patch names a PriorityClass this cluster does not have
                    result.notes.append(f"pod dry-run refused ({exc.status}, not Pod Security)")


def run_batch(
    api: client.ApiClient,
    namespace: str,
    levels: Mapping[str, str],
    batch: Sequence[Case],
    judge_timeout: float,
    quiet_s: float,
    op: OperatorProcess,
    reconcile_interval_s: float,
    start_index: int = 0,
    progress: Callable[[str], None] | None = None,
    release_timeout: float = 60.0,
) -> Report:
    """Create `batch` in `namespace`, wait until each is judged, check every property.

    Args:
        api: an admin client of the cluster the operator watches.
        namespace: an empty namespace for the batch.
        levels: Pod Security level -> a namespace enforcing it (`pod_security_namespaces`).
        batch: the cases.
        judge_timeout: how long every accepted object has to get its Planned condition.
        quiet_s: the quiet window's length (after everything is judged and checked).
        op: the running operator.
        reconcile_interval_s: its safety-net interval (LLM_OPERATOR_RECONCILE_INTERVAL),
            which sets how many passes the quiet window may see.
        start_index: the first case's number (names are fz-NNNN).
        progress: called with a line at each stage.
        release_timeout: how long the operator has to let every object go once the batch
            is deleted at the end (its finalizer removed).

    Returns:
        The report (`Report.violations` empty when every property held).
    """
    say = progress or (lambda _line: None)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    started = time.monotonic()
    results = [Result(start_index + i, c, c.name(start_index + i)) for i, c in enumerate(batch)]
    for result in results:
        _create(custom, namespace, result)
    accepted = {r.name: r for r in results if not r.outcome}
    say(f"created {len(accepted)} of {len(results)} ({time.monotonic() - started:.0f} s)")

    def all_judged() -> bool:
        live = _list(custom, namespace)
        waiting = [n for n in accepted if n not in live or _judged(live[n]) is None]
        assert not waiting, f"{len(waiting)} not judged yet, e.g. {waiting[:3]}"
        return True

    try:
        eventually(all_judged, timeout=judge_timeout, interval=1, description="every judged")
    except AssertionError as err:
        say(str(err))
    say(f"judged ({time.monotonic() - started:.0f} s)")

    live, children = _list(custom, namespace), _children(api, namespace)
    for name, result in accepted.items():
        obj = live.get(name)
        condition = _judged(obj) if obj is not None else None
        owned = children.get(name, [])
        if obj is None or condition is None:
            result.outcome = UNJUDGED
            conditions = (obj or {}).get("status", {}).get("conditions")
            result.detail = f"conditions: {conditions}"
            result.violations.append("accepted but never judged (no Planned condition)")
        elif condition["status"] == "True":
            result.outcome = PLANNED
            _check_planned(result, obj, owned, core, levels)
        else:
            result.outcome = INFEASIBLE if condition["reason"] == "NoFeasiblePlan" else INVALID
            _check_refusal(result, condition, owned)
    say(f"checked ({time.monotonic() - started:.0f} s)")
    report = Report(results)
    report.quiet, report.operator = quiet_window(
        api, namespace, op, quiet_s, len(accepted), reconcile_interval_s
    )
    deleting = time.monotonic()
    for name, problem in delete_all(api, namespace, release_timeout).items():
        accepted[name].violations.append(problem)
    report.quiet["all deleted after"] = round(time.monotonic() - deleting)
    say(f"deleted ({time.monotonic() - started:.0f} s)")
    report.elapsed_s = time.monotonic() - started
    return report


def delete_all(api: client.ApiClient, namespace: str, timeout: float) -> dict[str, str]:
    """Delete every LLMDeployment of the namespace and wait until the operator has let each
    go (removed its finalizer).

    Returns:
        name -> what went wrong, for each still there after `timeout`; their finalizers are
        then removed here, so that the namespace does not hang in Terminating.
    """
    custom = client.CustomObjectsApi(api)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

    def gone() -> bool:
        left = _list(custom, namespace)
        assert not left, f"{len(left)} left, e.g. {sorted(left)[:3]}"
        return True

    with suppress(AssertionError):  # what is left is reported below
        eventually(gone, timeout=timeout, interval=1, description="every LLMDeployment deleted")
    problems: dict[str, str] = {}
    for name, obj in _list(custom, namespace).items():
        finalizers = obj["metadata"].get("finalizers")
        problems[name] = f"still there {timeout:g} s after its deletion (finalizers {finalizers})"
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}}
        )
    return problems


# --- the operator process -------------------------------------------------------------------


def _counter(op: OperatorProcess, metric: str) -> float:
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith(f"{metric}{{") or line.startswith(f"{metric} "):
            total += float(line.rsplit(" ", 1)[1])
    return total


SETTLE_S = 4.0  # the batch has settled when no LLMDeployment was written for this long
SETTLE_MAX_S = 60.0  # ... or after this long, whatever it does (then the window judges it)


def _writes(custom: client.CustomObjectsApi, namespace: str, seconds: float) -> Counter[str]:
    """How often each LLMDeployment of the namespace is written in the next `seconds`."""
    version = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"][
        "resourceVersion"
    ]
    modified: Counter[str] = Counter()
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        resource_version=version,
        timeout_seconds=max(1, round(seconds)),
    )
    for event in stream:
        if event["type"] == "MODIFIED":
            modified[event["object"]["metadata"]["name"]] += 1
    return modified


def quiet_window(
    api: client.ApiClient,
    namespace: str,
    op: OperatorProcess,
    seconds: float,
    objects: int,
    reconcile_interval_s: float,
) -> tuple[dict[str, float], list[str]]:
    """Once the batch has settled, watch its LLMDeployments for `seconds`: nothing changes
    them, so the operator should write (almost) nothing.

    Returns:
        (what was measured, violations): an object written more than MAX_WRITES_AT_REST
        times, or more reconcile passes than the safety-net rounds of every object that can
        fall in the window (one per interval begun, plus one, plus 10) are a hot loop.
    """
    custom = client.CustomObjectsApi(api)
    started = time.monotonic()
    # Settle first: the engine pods start, readiness and metrics arrive, each a status write.
    while time.monotonic() - started < SETTLE_MAX_S and _writes(custom, namespace, SETTLE_S):
        pass
    settled = time.monotonic() - started
    before = _counter(op, "llm_operator_reconcile_total")
    writes_before = _counter(op, "llm_operator_api_writes_total")
    modified = _writes(custom, namespace, seconds)
    passes = _counter(op, "llm_operator_reconcile_total") - before
    writes = _counter(op, "llm_operator_api_writes_total") - writes_before
    # Every object's safety-net pass may come round once per interval begun in the window.
    bound = objects * (math.ceil(seconds / reconcile_interval_s) + 1) + 10
    violations = [
        f"{name} was written {n} times in a {seconds:g} s quiet window (hot loop?)"
        for name, n in modified.items()
        if n > MAX_WRITES_AT_REST
    ]
    if passes > bound:
        violations.append(
            f"{passes:.0f} reconcile passes in a {seconds:g} s quiet window for {objects} "
            f"objects (bound {bound:.0f}): a hot loop"
        )
    measured = {
        "settled after": round(settled),
        "seconds": seconds,
        "reconcile passes": passes,
        "bound": math.floor(bound),
        "API writes": writes,
        "objects written": len(modified),
        "most writes of one object": max(modified.values(), default=0),
    }
    return measured, violations


def operator_violations(op: OperatorProcess, log_mark: int) -> list[str]:
    """The process is alive and healthy, and its log since `log_mark` has no traceback and
    no handler that failed with an unexpected exception."""
    out: list[str] = []
    if op.proc is None or op.proc.poll() is not None:
        code = None if op.proc is None else op.proc.returncode
        return [f"the operator exited ({code}):\n{op.tail()}"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5):
            pass
    except OSError as err:
        out.append(f"the operator's liveness endpoint failed: {err}")
    log = op.log_since(log_mark)
    for needle in ("Traceback", "failed with an exception"):
        if needle in log:
            at = log.index(needle)
            out.append(f"operator log has {needle!r}:\n{log[max(0, at - 1500) : at + 3000]}")
    return out
