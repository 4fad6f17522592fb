"""datacoord: segments and their allocation."""
