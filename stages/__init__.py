"""One thin module per DVC stage: read its params section, call molar_core, write its outs."""
