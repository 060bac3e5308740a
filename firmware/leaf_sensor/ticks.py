"""Millisecond ticks: MicroPython's wrapping ``time.ticks_*``, and plain
integers under CPython (host-side tools and tests), in one place."""

# False when run; type checkers take a name TYPE_CHECKING as true, so they check the firmware
# against MicroPython's time and leave out the CPython stand-ins, which its stubs do not describe.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
else:
    try:
        from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
    except ImportError:  # CPython: plain integers do not wrap
        import time as _time

        def ticks_ms():
            return int(_time.monotonic() * 1000)

        def ticks_add(t, delta):
            return t + delta

        def ticks_diff(a, b):
            return a - b

        def sleep_ms(ms):
            _time.sleep(ms / 1000)
