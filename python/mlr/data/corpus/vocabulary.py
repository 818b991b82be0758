"""Words the list and spelling tasks are built from (lowercase, letters only)."""

from __future__ import annotations

LIST_ITEMS: tuple[str, ...] = (
    "apple", "pear", "fig", "plum", "grape", "lemon", "mango", "peach", "cherry", "melon",
    "cat", "dog", "horse", "goat", "mouse", "tiger", "zebra", "otter", "eagle", "whale",
    "red", "blue", "green", "pink", "gray", "violet", "orange", "brown", "black", "white",
    "chair", "table", "lamp", "book", "cup", "spoon", "door", "shoe", "clock", "brush",
)

SPELLING_WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "hat", "map", "cup", "pen", "box", "bus", "egg",
    "fish", "milk", "frog", "tree", "star", "moon", "rain", "snow", "ship", "bell",
    "lamp", "kite", "rose", "leaf", "sand", "wolf", "duck", "cake", "corn", "door",
    "apple", "bread", "chair", "cloud", "dream", "field", "glass", "grape", "heart", "house",
    "light", "money", "music", "night", "ocean", "paper", "plant", "queen", "river", "smile",
    "stone", "table", "tiger", "train", "water", "wheel", "zebra", "honey", "lemon", "piano",
    "garden", "basket", "bridge", "button", "candle", "castle", "circle", "dragon", "flower",
    "forest", "guitar", "island", "jacket", "ladder", "marble", "monkey", "orange", "pencil",
    "pepper", "rabbit", "rocket", "silver", "spider", "summer", "turtle", "window", "winter",
    "blanket", "chicken", "dolphin", "kitchen", "lantern", "morning", "pumpkin", "rainbow",
    "teacher", "volcano", "bicycle", "elephant", "mountain", "sandwich", "umbrella",
)
