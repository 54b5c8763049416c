"""The demo shop of API.md, written into a new orders database so a fresh clone is usable at once."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_TENANT = "default"
DEMO_SHOP_NAME = "Demo Shop"
# Where the demo shop's returns go (printed on its prepaid return labels).
DEMO_RETURN_ADDRESS = "Returns Department\n100 Warehouse Way\nSpringfield, IL 62701\nUnited States"


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    description: str
    category: str
    price_cents: int
    stock: int


@dataclass(frozen=True, slots=True)
class DemoOrder:
    id: str
    email: str
    status: str
    shipping_address: str
    items: tuple[tuple[str, int], ...]
    days_ago: int


CUSTOMERS: tuple[tuple[str, str], ...] = (
    ("alice@example.com", "Alice Martin"),
    ("bob@example.com", "Bob Smith"),
)

CATALOG: tuple[Product, ...] = (
    Product(
        "HDP-NC100",
        "Noise Cancelling Headphones",
        "Over-ear wireless headphones with active noise cancelling and 30-hour battery life.",
        "audio",
        19999,
        25,
    ),
    Product(
        "EAR-BT200",
        "Wireless Earbuds",
        "True wireless earbuds with charging case, IPX4 splash resistance and 24-hour total playback.",
        "audio",
        8999,
        40,
    ),
    Product(
        "SPK-PT300",
        "Portable Bluetooth Speaker",
        "Waterproof speaker with 360-degree sound and 12 hours of playback.",
        "audio",
        5999,
        30,
    ),
    Product(
        "MIC-USB10",
        "USB Condenser Microphone",
        "Cardioid USB microphone for calls, streaming and podcasts, with a desk stand.",
        "audio",
        8999,
        12,
    ),
    Product(
        "HDP-KID20",
        "Kids' Headphones",
        "Volume-limited (85 dB) on-ear headphones in a bendable, durable frame.",
        "audio",
        2499,
        3,
    ),
    Product(
        "KBD-MX400",
        "Mechanical Keyboard",
        "Tenkeyless mechanical keyboard with hot-swappable brown switches and white backlight.",
        "computer accessories",
        12999,
        15,
    ),
    Product(
        "MSE-WL500",
        "Wireless Mouse",
        "Ergonomic wireless mouse with silent clicks and a 70-day battery.",
        "computer accessories",
        2999,
        60,
    ),
    Product(
        "MON-27Q",
        "27-inch QHD Monitor",
        "27-inch 2560x1440 IPS monitor, 75 Hz, with height-adjustable stand and USB-C input.",
        "computers",
        32999,
        8,
    ),
    Product(
        "LAP-ST14",
        "Aluminium Laptop Stand",
        "Adjustable aluminium stand for 11- to 17-inch laptops.",
        "computer accessories",
        3999,
        35,
    ),
    Product(
        "HUB-USBC7",
        "USB-C 7-in-1 Hub",
        "HDMI 4K, 3x USB-A, SD and microSD readers and 100 W pass-through charging.",
        "computer accessories",
        4999,
        50,
    ),
    Product(
        "CBL-USBC2M",
        "USB-C Cable 2 m",
        "Braided USB-C to USB-C cable, 100 W charging and 10 Gbps data.",
        "cables",
        1299,
        200,
    ),
    Product(
        "CHG-GAN65",
        "65W GaN Charger",
        "Compact two-port (USB-C and USB-A) wall charger for laptops and phones.",
        "power",
        3999,
        70,
    ),
    Product(
        "PWR-20K",
        "Power Bank 20,000 mAh",
        "Portable battery with 22.5 W fast charging and two outputs.",
        "power",
        4499,
        45,
    ),
    Product(
        "WCH-FIT2",
        "Fitness Watch",
        "GPS fitness watch with heart-rate monitoring, sleep tracking and 10-day battery.",
        "wearables",
        14999,
        20,
    ),
    Product(
        "CAM-HD1080",
        "1080p Webcam",
        "Full-HD webcam with autofocus, dual microphones and a privacy shutter.",
        "computer accessories",
        6999,
        25,
    ),
    Product(
        "SSD-P1TB",
        "Portable SSD 1 TB",
        "Pocket-sized USB-C solid-state drive, up to 1,050 MB/s.",
        "storage",
        10999,
        18,
    ),
    Product(
        "BAG-LT15",
        "Laptop Backpack 15-inch",
        "Water-repellent backpack with a padded 15-inch laptop sleeve and luggage strap.",
        "bags",
        6499,
        30,
    ),
    Product(
        "LMP-DSK10",
        "Smart LED Desk Lamp",
        "Dimmable desk lamp with adjustable colour temperature and a USB charging port.",
        "home",
        4999,
        22,
    ),
    Product(
        "TAB-10",
        "10-inch Tablet",
        "10.1-inch tablet, 64 GB storage, Wi-Fi, with a full-day battery.",
        "tablets",
        27999,
        10,
    ),
    Product(
        "CSE-TAB10",
        "Tablet Folio Case",
        "Slim folio case with stand for the 10-inch tablet.",
        "tablets",
        2499,
        40,
    ),
    Product(
        "RTR-AX3000",
        "Wi-Fi 6 Router",
        "Dual-band AX3000 router with four gigabit ports and parental controls.",
        "networking",
        12999,
        14,
    ),
    Product(
        "PLG-SMART2",
        "Smart Plug (2-pack)",
        "Wi-Fi smart plugs with energy monitoring and schedules; works with voice assistants.",
        "home",
        2999,
        80,
    ),
    Product(
        "CTL-GAME",
        "Wireless Game Controller",
        "Bluetooth controller for PC, Android and TV, with rechargeable battery.",
        "gaming",
        5999,
        0,
    ),
)

ORDERS: tuple[DemoOrder, ...] = (
    DemoOrder(
        "ORD-1001",
        "alice@example.com",
        "pending",
        "12 Main Street, Springfield, IL 62701, USA",
        (("HDP-NC100", 1), ("CBL-USBC2M", 2)),
        1,
    ),
    DemoOrder(
        "ORD-1002",
        "alice@example.com",
        "shipped",
        "12 Main Street, Springfield, IL 62701, USA",
        (("KBD-MX400", 1), ("MSE-WL500", 1)),
        6,
    ),
    DemoOrder(
        "ORD-1003",
        "alice@example.com",
        "delivered",
        "12 Main Street, Springfield, IL 62701, USA",
        (("SPK-PT300", 1),),
        20,
    ),
    DemoOrder(
        "ORD-1004",
        "bob@example.com",
        "processing",
        "48 Oak Avenue, Portland, OR 97205, USA",
        (("MON-27Q", 1), ("LAP-ST14", 1)),
        2,
    ),
)
