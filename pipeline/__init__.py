"""The molar pipeline: the typed params schema, the artifact paths, the workspace readers and the params -> library
configs (what stages import), then the typer CLI, the report and add-items (which import no stage)."""
