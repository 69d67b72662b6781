"""The miniature world: entities, facts, the pre-training corpus and the prompted tasks."""
