from imagebuild.cli import run

raise SystemExit(run())
