"""The compact models: dense encoders holding only the kept units, one file per model family.

These files import only torch, transformers and each other (relative imports), never grain: they are
the compact model's modeling code wherever it runs. `grain.models.registry` finds each family's
`COMPACT_FAMILY` declaration and registers its classes with the HF Auto classes.
"""
