"""The molar pipeline: typer CLI, the typed params schema and the artifact paths."""
