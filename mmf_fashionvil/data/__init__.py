"""Fashion datasets in MMF's builder / dataset / database split."""
