"""Entry points, one thin module per ``task=`` value: compose library objects, call them, print and log."""
