"""Independent readers of airbridge's meter server, for tests/ksem/share.rs.

`sunspec PORT UNIT`: pysunspec2 scans the SunSpec chain and prints model 203's W and
TotWhImp (scale factors applied by pysunspec2) as JSON.
`kostal PORT UNIT...`: pymodbus reads the KOSTAL map's P+ and P- (registers 0..3, FC03)
and A+ (512..515) at each unit id and prints the raw words as JSON.
Nothing here was written against airbridge's code: only the packages' public APIs.
"""
import json
import sys


def sunspec(port, unit):
    import sunspec2.modbus.client as client

    d = client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr="127.0.0.1", ipport=port, timeout=5)
    try:
        d.scan()
        models = sorted(k for k in d.models if isinstance(k, int))
        m = d.models[203][0]
        m.read()
        print(json.dumps({"models": models, "W": m.W.cvalue, "TotWhImp": m.TotWhImp.cvalue,
                          "base": m.model_addr}))
    finally:
        d.close()


def kostal(port, units):
    from pymodbus.client import ModbusTcpClient

    c = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    if not c.connect():
        raise SystemExit("cannot connect")
    out = {}
    try:
        for unit in units:
            p = c.read_holding_registers(0, count=4, device_id=unit)
            e = c.read_input_registers(512, count=4, device_id=unit)
            if p.isError() or e.isError():
                raise SystemExit(f"unit {unit}: {p} {e}")
            out[str(unit)] = {"power": list(p.registers), "a_plus": list(e.registers)}
        print(json.dumps(out))
    finally:
        c.close()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    units = [int(u) for u in sys.argv[3:]]
    if mode == "sunspec":
        sunspec(port, units[0])
    else:
        kostal(port, units)
