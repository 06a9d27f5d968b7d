"""C sources written by mlaref.codegen.generate; never edited by hand."""
