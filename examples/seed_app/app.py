from flask import Flask
from routes.data import api_bp

site = Flask(__name__)

# Register blueprint
site.register_blueprint(api_bp, url_prefix='/')

if __name__ == "__main__":
    site.run(debug=True)
