"""Training recipes for models that probebench ships (run from the repository root; not installed).

Each recipe imports the installed architecture it trains (``recipes → backbones``); nothing installed imports a
recipe, so building an adapter never loads training code.
"""
