"""Command-line tools and scripts; the library never imports from here."""
