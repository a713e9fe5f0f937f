import os
import uuid

import requests
from flask import Blueprint, jsonify, request

from routes.shared import state_cache

# The port this app is served on, for the loopback call below (the original hard-coded 5000).
PORT = os.environ.get("PORT", "5000")

api_bp = Blueprint('svc', __name__)


@api_bp.route('/hello_world', methods=['POST'])
def say_hello():
    # Generate a new UUID and store sample data
    sid = str(uuid.uuid4())
    payload = {"message": "Hello, World!", "session_id": sid}
    state_cache[sid] = payload
    return jsonify({"session_id": sid}), 201


@api_bp.route('/get_hello_world', methods=['GET'])
def fetch_hello():
    # Get session_id from query string
    sid = request.args.get('session_id')
    if not sid or sid not in state_cache:
        return jsonify({"error": "Invalid or missing session_id"}), 404
    return jsonify(state_cache[sid]), 200


@api_bp.route('/call_hello_world', methods=['POST'])
def invoke_hello():
    # Make API call to /hello_world endpoint on localhost (a request back into this same service)
    try:
        resp = requests.post(f"http://localhost:{PORT}/hello_world")
        return (resp.content, resp.status_code, resp.headers.items())
    except Exception as e:
        return jsonify({"error": str(e)}), 500
