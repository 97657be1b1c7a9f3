"""Recipes (imagebuild/recipes/*.toml) and the boot files rendered from templates."""
