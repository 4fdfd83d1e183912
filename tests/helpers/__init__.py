"""Helpers shared by the test folders: started runners, a live server, fuzzing, the seed's app.

A package (``from helpers.runtime import live``) so no helper's module name can collide
with another folder's ``conftest`` or with an installed package.
"""
