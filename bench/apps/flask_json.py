"""Flask JSON hello: the smallest real-framework view."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def hello():
    return jsonify(message="Hello, World!")
