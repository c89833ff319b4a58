"""One module per stage; the module name is the stage name and its folder in a run."""
