"""Reading photos and their EXIF claims; writing the engine's output files."""
