"""Data: synthetic CT generator, LIDC nodule-shape library, LUNA16-layout reader."""
