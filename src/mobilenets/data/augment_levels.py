"""The augmentation strengths a run can ask for (torch-free, for the command line's choices)."""

AUGMENT_LEVELS = ("none", "light", "medium", "heavy", "augmix", "augmix-all")
