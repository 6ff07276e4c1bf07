"""Render an LLMDeployment and its plan into Kubernetes objects (pure; no cluster).

Called by the reconciler (`reconcile.desired`) and `llmctl render`.
"""

from llm_operator.render.render import (
    ANNOTATION_SPEC_HASH,
    IMAGES,
    RenderError,
    labels_for,
    render_for,
    render_objects,
    selector_for,
    spec_hash,
    strategic_merge,
    to_yaml,
)

__all__ = [
    "ANNOTATION_SPEC_HASH",
    "IMAGES",
    "RenderError",
    "labels_for",
    "render_for",
    "render_objects",
    "selector_for",
    "spec_hash",
    "strategic_merge",
    "to_yaml",
]
