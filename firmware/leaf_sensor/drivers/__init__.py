"""Sensor drivers, micropython-lib style: the bus is passed in, ``read()`` returns a dict."""
