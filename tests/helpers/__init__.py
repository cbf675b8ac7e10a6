"""Child-process scripts and the helpers they share with the tests."""
