"""Entry points that other tools load by file path (ms-swift's ``--external_plugins``).

This directory holds nothing else on purpose: a tool that loads a plugin file
puts the file's directory first on ``sys.path``, and any sibling module there
would shadow a real package of the same name.
"""
