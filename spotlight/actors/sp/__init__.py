"""Elastic sequence-parallel groups on one node.

``work`` (a sampling job and its step snapshot), ``group`` (the group scheduler that re-forms
on loss or join), ``member`` (SPMember, one per GPU process), ``local`` (starting member
processes on this node). Imports ``weights``.
"""
