"""The stages between a source and an encoder: aggregate, resolve, build, and
the facts about processes they need. Imports neither kernel/ nor daemon/.
"""
