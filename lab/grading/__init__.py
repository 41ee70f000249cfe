"""Assessment: exercises, packs, grading (layer L4: composes bench, serve and verify)."""
