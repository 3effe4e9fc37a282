"""Push-T: the gym-pusht simulator wrapper, the scripted expert, and demonstration datasets."""
