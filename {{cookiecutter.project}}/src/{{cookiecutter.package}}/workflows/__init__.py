"""What is built on training: launching it, then evaluate, export, predict, serve, search and compare."""
