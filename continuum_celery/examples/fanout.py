"""A fan-out: resize images in parallel, then build a catalogue page in a child workflow."""

from __future__ import annotations

from typing import Any

from continuum_celery import WorkflowContext, activity, workflow


@activity
def resize(image: str, width: int) -> str:
    """Resize one image; returns the new file name."""
    return f"{image.rsplit('.', 1)[0]}-{width}w.jpg"


@activity
def render_page(title: str, thumbnails: list[str]) -> dict[str, Any]:
    """Render a catalogue page from thumbnails."""
    return {"title": title, "tiles": len(thumbnails)}


@workflow(workflow="fanout.page_flow", version=1)
def page_flow(ctx: WorkflowContext, spec: dict[str, Any]) -> dict[str, Any]:
    """Child workflow: render one page."""
    return ctx.run(render_page, spec["title"], spec["thumbnails"])


@workflow(workflow="fanout.catalogue_flow", version=1)
def catalogue_flow(ctx: WorkflowContext, job: dict[str, Any]) -> dict[str, Any]:
    """Resize every image at once, then hand the page to a child run."""
    futures = [ctx.start_activity(resize, image, job.get("width", 320)) for image in job["images"]]
    thumbnails = ctx.gather(futures)
    page = ctx.start_child(page_flow, {"title": job["title"], "thumbnails": thumbnails})
    return {"thumbnails": thumbnails, "page": page.result(), "page_run": page.id}
