"""Run a recipe against a root into an image: the mkfile's `%.disk` rule.

    plan_build()   (pipeline.plan) reads every input, renders the boot files
                   and lists the fs tree; missing inputs are reported at once
    lay_out()      (pipeline.write) runs every step but the fs partition's
                   in memory, so every check happens before the first byte
    write_image()  (pipeline.write) replays those writes onto the container,
                   with the fs partition where the rule writes it
    build()        all three, into a temporary file renamed over the target
                   only when everything succeeded (pipeline.output)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuild.disk.device import RawFile
from imagebuild.errors import InputError, show_path
from imagebuild.pipeline.output import atomic_output, check_output
from imagebuild.pipeline.plan import BuildOptions, BuildPlan, fs_tree, plan_build
from imagebuild.pipeline.write import lay_out, write_image
from imagebuild.recipe.load import Recipe
from imagebuild.util.progress import Progress

if TYPE_CHECKING:
    from imagebuild.pipeline.iso import IsoPlan

__all__ = ["BuildOptions", "BuildPlan", "build", "fs_tree", "plan_build", "write_image"]


def build(recipe: Recipe, options: BuildOptions,
          progress: Progress | None = None) -> BuildPlan | IsoPlan:
    """Plan, check, then write the image atomically to plan.output: a BuildPlan for a
    disk target, an IsoPlan for an ISO one (`recipe.iso`).

    Raises ImageBuildError (bad input, recipe or layout; nothing written) and
    OSError (the output cannot be written; the target is left as it was).
    """
    if options.output is not None:
        check_output(options.output)  # before any work: -o DIR/, a directory, a FIFO
    if recipe.iso is not None:  # the mkfile's %.pc.iso: no disk, mk9660
        from imagebuild.pipeline.iso import build_iso

        return build_iso(recipe, options, progress)
    plan = plan_build(recipe, options)
    check_output(plan.output)
    refuse_output_as_input(plan, options)
    layout = lay_out(plan)
    with atomic_output(plan.output, sync=options.sync) as tmp:
        if plan.container == "qcow2":
            from imagebuild.container.qcow2.image import Qcow2Image

            with Qcow2Image.create(tmp, plan.size, sync=options.sync) as image:
                write_image(plan, image.data, progress, layout)
        else:
            with RawFile.create(tmp, plan.size) as raw:
                write_image(plan, raw, progress, layout)
    return plan


def refuse_output_as_input(plan: BuildPlan, options: BuildOptions) -> None:
    """Refuse an output that is (a link to) a file the build reads: the recipe and the files
    it extends, the root's kernels, boot programs and protos, and --file paths.

    Raises InputError naming both.
    """
    try:
        out = os.stat(plan.output)
    except OSError:
        return  # a new file: it cannot be an input
    inputs = [*plan.recipe.sources, *(plan.root / rel for rel in plan.recipe.root_inputs()),
              *(Path(text.partition("=")[2]) for text in options.files)]
    for path in inputs:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
            raise InputError(f"{show_path(plan.output)}: output is the input {show_path(path)}; "
                             f"writing the image there would destroy it")
