"""Offline commands over profiles and binaries: report/top, symbolize, check
and the flame graphs.
"""
