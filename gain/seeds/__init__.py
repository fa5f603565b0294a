"""The `seeds` stage: attention -> SEC localization cues, and their quality against masks."""
