"""PNG figures of a run (curves, confusion matrices, PR curves, example grids): numpy, matplotlib, cv2 only."""
